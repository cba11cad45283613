"""Loading a model repository's versions into a running server, and taking them out: `--model-repository`.

At startup every model of ROOT loads its versions by the policy in the background (liveness answers meanwhile,
readiness once done), in name order and no more than --max-loaded-models; a version that fails is logged,
counted and skipped for the next older complete one, and a model none of whose versions loads is left out
(without --poll, the server is not live when nothing at all loads). `load(name)` (the v2 `.../load` route, and
`--poll`) re-reads that model's folder and loads each version the policy picks that is new or changed (all of
them when none is: a load asked for reloads) beside those serving: the predictor loads and warms up (its runs
taking turns with the requests'), and only once all are ready are they switched in; the versions they replace
finish what they hold and are freed (models.py). A load that fails changes nothing: the serving versions keep
answering, and `Refused` says why (a version still being copied: 409; one that cannot load, damaged,
tampered with or made for another release: 422). `unload(name)` drains and removes. `--poll SECONDS` looks at
ROOT that often and acts on a model whose complete versions changed and stayed the same for one more look (so
a folder still being copied is never picked up), once per change, failed or not: it loads new and changed
models and unloads those whose folder is gone. Loads run one at a time. Not here: what a complete version is,
and the policy (repository.py); the routes (kserve.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.host import grown
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve import repository
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.models import Models, Refused, on_loading_thread
from bertdeploy.serve.prometheus import FAILED, LOADED
from bertdeploy.serve.repository import Policy, Version
from bertdeploy.serve.served import Served

logger = logging.getLogger(__name__)


def open_repository(options: ServeOptions) -> Models:
    """The server's models for `options.model_repository`, empty until its loader starts with the server; refused at
    once when ROOT is no directory, or holds nothing to serve (without --poll). More versions than --max-loaded-models
    are not refused here: the loader loads what fits, and says which are left out (a pod restarted after one model
    too many was added should serve the others, not crash-loop)."""
    root, policy = options.model_repository, Policy.parse(options.version_policy)
    found = repository.scan(root)
    picked = {name: repository.chosen(versions, policy) for name, versions in found.items()}
    count = sum(map(len, picked.values()))
    check_options([(count > 0 or options.poll is not None,
                    f"{root}: no complete model version to serve (ROOT/<name>/<version>/ holding an export); add one, "
                    "or pass --poll to wait for them")])
    models = Models(options, started=False)
    models.loader = Loader(models, root, policy, options.max_loaded_models, options.poll)
    models.loader.plan = ", ".join(f"{name} {'/'.join(str(v.number) for v in versions) or '(nothing complete)'}"
                                  for name, versions in picked.items()) or "empty"
    return models


class Loader:
    """Loads and unloads the models of the repository `root` into `models`, by `policy`."""

    def __init__(self, models: Models, root: Path, policy: Policy, max_loaded: int | None = None,
                 poll: float | None = None) -> None:
        self.models, self.root, self.policy, self.max_loaded, self.poll = models, root, policy, max_loaded, poll
        self.lock = asyncio.Lock()  # one load or unload at a time
        self.acted: dict[str, tuple] = {}  # model -> its complete versions' signature when last loaded or unloaded
        self.failures: dict[tuple[str, int], str] = {}  # (model, version) -> why its last load failed
        self.plan = ""  # what it will load at startup, for the log
        self.looks = 0  # the looks at ROOT --poll took
        self.loading: set[tuple[str, int]] = set()  # the versions being loaded now

    # -- at startup ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model, in name order, each version the policy picks or, where one fails, the next older
        complete one, as long as --max-loaded-models allows; then the server is started (ready), and polls ROOT if
        asked to. Without --poll a repository of which nothing loads leaves the server not live."""
        async with self.lock:  # the routes' loads wait for this one
            found = await self._start()
        if any(v.complete for versions in found.values() for v in versions) and not self.models.table and \
                not self.poll:
            logger.error("no model of %s could be loaded; the server is not live", self.root)
            self.models.lifecycle.failed = True
        self.models.lifecycle.started = True
        logger.info("ready")
        if self.poll:
            await self._poll()

    async def _start(self) -> dict[str, list[Version]]:
        found = await asyncio.to_thread(repository.scan, self.root)
        for name, versions in found.items():
            loaded = []
            for version in [v for v in versions if v.complete]:
                if self.policy.count is not None and len(loaded) == self.policy.count:
                    break
                if self.max_loaded is not None and len(self.models.all()) + len(loaded) >= self.max_loaded:
                    self.failures[(name, version.number)] = f"not loaded: --max-loaded-models {self.max_loaded}"
                    logger.error("model %r version %d not loaded: --max-loaded-models %d versions are loaded", name,
                                 version.number, self.max_loaded)
                    break
                try:
                    self.loading.add((name, version.number))
                    loaded.append(await self._open(version))
                except Refused as e:
                    logger.error("%s", e)
                finally:
                    self.loading.clear()
            self.acted[name] = _signature(versions, self.policy)
            if loaded:
                await self.models.retire(self.models.switch(name, loaded))
                logger.info("model %r: version %s ready", name, ", ".join(str(s.version) for s in loaded))
            elif versions:
                logger.error("model %r: no version loaded; it is not served", name)
        return found

    # -- load and unload ----------------------------------------------------------------------------------------

    async def load(self, name: str, complete_only: bool = False) -> dict:
        """`_load`, its refusal logged."""
        try:
            return await self._load(name, complete_only)
        except Refused as e:
            logger.error("%s", e)
            raise

    async def _load(self, name: str, complete_only: bool) -> dict:
        """(Re)load model `name` from its folder: each version the policy picks, beside those serving, switched in
        once all are warmed up; the old ones drain and go. Refused, changing nothing, when that cannot be, a
        version the policy picks still being copied among the reasons (unless `complete_only`: --poll's loads pick
        among the complete versions)."""
        async with self.lock:
            self._check_open()
            if not repository.NAME.fullmatch(name):
                raise Refused(404, f"no model {name!r}: a model's name is its folder's, letters, digits, '_', '.' "
                                     "and '-'")
            versions = await asyncio.to_thread(repository.versions, self.root, name)
            if not versions:
                raise Refused(404, f"{self.root / name}: no model folder with a version in it; a model is "
                                     f"ROOT/<name>/<version>/ (or ROOT/<name>/ holding one export)")
            picked = repository.chosen(versions, self.policy, complete_only=complete_only)
            self.acted[name] = _signature(versions, self.policy)
            # a version picked is incomplete; or --poll's pick among the complete ones found none
            incomplete = [v for v in picked if not v.complete] or ([] if picked else versions)
            if incomplete:
                raise self._failed(name, incomplete[0], f"not complete: {incomplete[0].problem}; nothing changed",
                                   409)
            others = sum(len(v) for n, v in self.models.table.items() if n != name)
            if self.max_loaded is not None and others + len(picked) > self.max_loaded:
                raise Refused(409, f"loading {len(picked)} version(s) of {name!r} beside the {others} other versions "
                                     f"loaded would pass --max-loaded-models {self.max_loaded}; unload one first")
            serving = self.models.table.get(name, {})
            kept = {v.number: serving[v.number] for v in picked
                    if v.number in serving and serving[v.number].fingerprint == v.fingerprint}
            if len(kept) == len(picked):
                kept = {}  # nothing changed: asked to load, it reloads them all
            loaded: list[Served] = []
            try:
                for version in picked:
                    self.loading.add((name, version.number))
                    loaded.append(kept.get(version.number) or await self._open(version))
            except Refused:
                await self.models.retire([s for s in loaded if s not in kept.values()])
                raise
            finally:
                self.loading.clear()
            old = self.models.switch(name, loaded)
            await self.models.retire([s for s in old if s not in kept.values()])
        numbers = sorted(s.version for s in loaded)
        logger.info("model %r: version %s serving (%s loaded)", name, ", ".join(map(str, numbers)),
                    ", ".join(str(s.version) for s in loaded if s not in kept.values()))
        return {"name": name, "versions": [str(n) for n in numbers]}

    async def unload(self, name: str) -> dict:
        """Stop serving model `name`: new requests get 404 at once, those it holds finish, then it is freed."""
        async with self.lock:
            self._check_open()
            if name not in self.models.table:
                raise Refused(404, f"model {name!r} is not loaded; this server has {self.models.describe()}")
            versions = await asyncio.to_thread(repository.versions, self.root, name)
            self.acted[name] = _signature(versions, self.policy)
            await self.models.retire(self.models.switch(name, []))
        logger.info("model %r unloaded", name)
        return {"name": name, "versions": []}

    def _check_open(self) -> None:
        if self.models.lifecycle.draining:
            raise Refused(503, "the server is shutting down; load the model on another instance")

    async def _open(self, version: Version) -> Served:
        """Load and warm up one version (not yet served); Refused when it cannot, counted and kept for the index."""
        if not version.complete:
            raise self._failed(version.name, version, version.problem, 409)
        options = self.models.options

        def load() -> Predictor:
            predictor = Predictor.load(version.path, options=options.runtime)
            predictor.warm_up(self.models.slots)
            return predictor

        try:
            predictor, memory = await on_loading_thread(grown, load)
        except BertdeployError as e:
            raise self._failed(version.name, version, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a file ONNX Runtime or OpenVINO cannot read: the version's fault
            raise self._failed(version.name, version, f"{version.path}: cannot be loaded: "
                                                      f"{' '.join(str(e).split()) or type(e).__name__}") from None
        self.failures.pop((version.name, version.number), None)
        self.models.metrics.loads.labels(version.name, LOADED).inc()
        return self.models.make(version.name, version.number, predictor, warmed=True, memory_bytes=memory,
                                fingerprint=version.fingerprint)

    def _failed(self, name: str, version: Version, why: str, status: int = 422) -> Refused:
        self.failures[(name, version.number)] = why
        self.models.metrics.loads.labels(name, FAILED).inc()
        return Refused(status, f"model {name!r} version {version.number} was not loaded: {why}")

    # -- --poll ------------------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Every `poll` seconds: act on each model whose complete versions changed and then held still for a look."""
        previous: dict[str, tuple] | None = None
        while True:
            await asyncio.sleep(self.poll)  # the interval between looks at ROOT, not a wait for a condition
            try:
                found = await asyncio.to_thread(self._signatures)
            except (BertdeployError, OSError) as e:
                logger.error("--poll: %s", e)
                continue
            finally:
                self.looks += 1
            if not found and self.models.table:
                logger.error("--poll: %s holds no model folder; the models loaded serve on (is the volume mounted?)",
                             self.root)
                continue
            if previous is not None:
                for name in sorted(set(found) | set(self.acted)):
                    now = found.get(name)
                    if now != previous.get(name) or now == self.acted.get(name):
                        continue  # still changing, or nothing new since the last load or unload
                    await self._act(name, now)
            previous = found

    async def _act(self, name: str, signature: tuple | None) -> None:
        """A change `--poll` found held still: load the model, or unload it when its folder is gone."""
        try:
            if signature is None:
                if name in self.models.table:
                    await self.unload(name)
                self.acted.pop(name, None)
            elif signature:  # a model folder without a complete version is one being copied: wait for it
                await self.load(name, complete_only=True)
        except Refused:
            pass  # logged
        except Exception:  # noqa: BLE001 - --poll goes on whatever one model's folder holds
            logger.exception("--poll: model %r", name)

    def _signatures(self) -> dict[str, tuple]:
        return {name: _signature(versions, self.policy) for name, versions in repository.scan(self.root).items()}

    # -- the index ---------------------------------------------------------------------------------------------

    async def index(self) -> list[dict]:
        """Every version in ROOT and every version loaded: name, version, state (READY, LOADING, UNAVAILABLE) and,
        where it is not served, the reason; a served version's memory."""
        found = await asyncio.to_thread(repository.scan, self.root)
        served = {(s.name, s.version): s for s in self.models.all()}  # here on the event loop, as the switches are
        entries = {}
        for name, versions in found.items():
            picked = {v.number for v in repository.chosen(versions, self.policy)}
            for version in versions:
                key = (name, version.number)
                if key in self.loading:
                    entries[key] = {"name": name, "version": str(version.number), "state": "LOADING"}
                    continue
                reason = (self.failures.get(key) or version.problem or
                          (f"not loaded (--version-policy {self.policy})" if version.number not in picked else
                           "not loaded"))
                entries[key] = {"name": name, "version": str(version.number), "state": "UNAVAILABLE",
                                "reason": reason}
        entries.update({key: one.entry() for key, one in served.items()})
        return [entries[key] for key in sorted(entries)]


def _signature(versions: list[Version], policy: Policy) -> tuple:
    """What a model's complete versions, as the policy picks them, look like: a change means a load is due."""
    return tuple((v.number, v.fingerprint) for v in repository.chosen(versions, policy))
