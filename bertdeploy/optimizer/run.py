"""`bertdeploy optimize MODEL --output-dir OUT`: the fastest model that keeps the teacher's accuracy, found and shown.

Each candidate (choose.py: the teacher's variants, a static student, layer-cut students; cheapest first) is made
by the library functions of the commands, never a copy of them: `distill` for a student (its own guard off: the
bound is judged here, against the teacher, on the same texts), `export` for its variants (guarded against their
own model, as always). A finished candidate (its export written) is reused on a rerun, so an interrupted run
loses at most the candidate it was making; past `time_budget_s` no new candidate starts; a candidate that fails is
reported and skipped. Then one `bench` run times every engine of every candidate on the same cells, interleaved,
and scores them on the same held-out texts (the teacher's); per cell the fastest exported variant within the bound
is chosen (or the teacher's best, said as such), and the candidate chosen in most cells is copied to OUT/model with
every figure in its manifest (`extra["optimize"]`), beside OUT/report.json and OUT/report.html (report.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from bertdeploy.artifacts import MANIFEST_NAME, atomic_file, staging_dir
from bertdeploy.benchmark.cases import NATURAL
from bertdeploy.benchmark.options import BenchOptions
from bertdeploy.benchmark.record import size_p50
from bertdeploy.benchmark.run import bench
from bertdeploy.builder.distill import DistillOptions, distill, model_depth
from bertdeploy.builder.export import ExportOptions, export
from bertdeploy.defaults import BENCH_BATCH_SIZES, MAX_ACCURACY_DROP, STATIC_DIMS
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.labels import judge_drop
from bertdeploy.manifest import AutoSection, ExportManifest, ModelManifest
from bertdeploy.optimizer import inputs as resolving
from bertdeploy.optimizer import report as reporting
from bertdeploy.optimizer.choose import TEACHER, Candidate, choose, default_candidates, kept_candidate, parse_candidates
from bertdeploy.optimizer.inputs import Inputs
from bertdeploy.runtime.routing import auto_section

logger = logging.getLogger(__name__)

NO_GUARD = 100.0  # points: a student's own distill guard, off (the bound is judged against the teacher here)
PYTORCH_PREFIX = "pytorch"  # bench's PyTorch engines: timed, not chosen (OUT holds an export)
ROUTER = "auto"  # bench's engine routing by an export's own recorded ranges: one of its variants, not chosen


@dataclass
class OptimizeOptions:
    model_dir: str | Path  # a `finetune` output: the teacher
    output_dir: str | Path
    _: KW_ONLY
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points below the teacher's PyTorch score, as export's bound
    batch_sizes: list[int] = field(default_factory=lambda: list(BENCH_BATCH_SIZES))
    seq_length: int = 128  # tokens of the fixed cells
    texts: str | Path | None = None  # real texts timed at their natural lengths, in place of the fixed cells
    candidates: str | None = None  # "teacher,static,layers-3"; None: choose.default_candidates
    time_budget_s: float | None = None  # no candidate starts past it
    train_file: str | Path | None = None  # default: the teacher's recorded training data
    eval_file: str | Path | None = None  # default: the teacher's recorded held-out data
    runs: int = 30  # timed calls per engine and cell
    training: dict[str, Any] = field(default_factory=dict)  # the students' training settings (distill's)

    def __post_init__(self) -> None:
        self.model_dir, self.output_dir = Path(self.model_dir), Path(self.output_dir)
        self.texts, self.train_file, self.eval_file = (None if p is None else Path(p) for p in
                                                       (self.texts, self.train_file, self.eval_file))
        check_options([
            (0 <= self.max_accuracy_drop <= 100, "--max-accuracy-drop is in points, between 0 and 100"),
            (bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "--batch-sizes must be at least 1"),
            (self.seq_length >= 8, "--seq-length must be at least 8"),
            (self.time_budget_s is None or self.time_budget_s >= 0, "--time-budget must be 0 or more"),
            (self.runs >= 1, "--runs must be at least 1"),
            *((path is None or path.is_file(), f"{flag} {path}: no such file") for flag, path in
              (("--texts", self.texts), ("--train-file", self.train_file), ("--eval-file", self.eval_file))),
        ])


@dataclass(kw_only=True)
class OptimizeResult:
    output_dir: Path
    kept: str  # the candidate whose export OUT/model holds
    report: dict  # report.json


def optimize(options: OptimizeOptions) -> OptimizeResult:
    """Make, time and score every candidate; keep the fastest within the bound in OUT/model, with the report."""
    teacher = ModelManifest.read(options.model_dir)
    depth = model_depth(options.model_dir)
    candidates = (default_candidates(depth) if options.candidates is None else
                  _with_teacher(parse_candidates(options.candidates, depth)))
    work = options.output_dir / "work"
    data = resolving.resolve(teacher, options.model_dir, work, train_file=options.train_file,
                             eval_file=options.eval_file, students=len(candidates) > 1)
    resolving.check_cells(teacher, options.texts, options.seq_length, options.batch_sizes, options.runs)
    if data.split:  # every check passed: the first file written
        resolving.write_held_out(teacher, data.scored_on)
    made, rejected, log = _make_all(candidates, options, data, data.recipe(teacher) | _settings(options), work)
    logger.info("timing and scoring every variant of %s on the same cells and texts", ", ".join(made))
    result = _bench(options, data, made, work)
    report = _report(options, data, result, made, rejected, log)
    page = reporting.render_html(report)
    _ship(made[report["export"]["candidate"]], options.output_dir / "model", report)
    reporting.write(report, page, options.output_dir)
    return OptimizeResult(output_dir=options.output_dir, kept=report["export"]["candidate"], report=report)


def _make_all(candidates: list[Candidate], options: OptimizeOptions, data: Inputs, recipe: dict,
              work: Path) -> tuple[dict[str, Path], list[dict], list[dict]]:
    """Each candidate's export, made (or reused when a finished one has the same recipe), cheapest first; the
    students that failed or were not started, with the stage and the reason; what each took."""
    started, made, rejected, log = time.monotonic(), {}, [], []
    for step, candidate in enumerate(candidates, 1):
        exported = work / "exports" / candidate.name
        logger.info("candidate %d of %d: %s", step, len(candidates), candidate.name)
        if (exported / MANIFEST_NAME).is_file() and _made_by(exported) == recipe:
            logger.info("%s: reused (%s)", candidate.name, exported)
            made[candidate.name] = exported
            log.append({"name": candidate.name, "status": "reused", "seconds": 0.0})
            continue
        spent = time.monotonic() - started
        if options.time_budget_s is not None and spent > options.time_budget_s and candidate.name != TEACHER:
            rejected.append({"candidate": candidate.name, "stage": "not started",
                             "reason": f"--time-budget {options.time_budget_s:g} s spent ({spent:.0f} s)"})
            continue
        began, stage = time.monotonic(), "distill"
        try:
            model = options.model_dir if candidate.name == TEACHER else _distill(candidate, options, data, work)
            stage = "export"
            made[candidate.name] = _export(candidate.name, model, options, data, work)
        except Exception as e:  # a student that cannot be made: reported, and the run goes on
            if candidate.name == TEACHER:
                raise
            reason = str(e) if isinstance(e, BertdeployError) else f"{type(e).__name__}: {e}"
            logger.error("%s: %s", candidate.name, reason, exc_info=not isinstance(e, BertdeployError))
            rejected.append({"candidate": candidate.name, "stage": stage, "reason": reason})
            continue
        _made_by(exported, recipe)
        log.append({"name": candidate.name, "status": "made", "seconds": round(time.monotonic() - began, 1)})
        logger.info("%s: made in %.0f s", candidate.name, log[-1]["seconds"])
    return made, rejected, log


def _settings(options: OptimizeOptions) -> dict:
    """The options a candidate is made with, beside its data (inputs.Inputs.recipe)."""
    return json.loads(json.dumps({"teacher": str(options.model_dir.absolute()),
                                  "max_accuracy_drop": options.max_accuracy_drop, "training": options.training},
                                 default=str))


def _made_by(exported: Path, recipe: dict | None = None) -> dict | None:
    """The recipe a finished candidate was made from (beside its export), written when `recipe` is given; None
    where there is none or it cannot be read (the candidate is made again)."""
    path = exported.with_name(f"{exported.name}.recipe.json")
    if recipe is not None:
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(recipe, indent=1), encoding="utf-8")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _with_teacher(candidates: list[Candidate]) -> list[Candidate]:
    """The teacher always: its export is the reference every candidate is timed beside."""
    return candidates if any(c.name == TEACHER for c in candidates) else [Candidate(TEACHER), *candidates]


def _distill(candidate: Candidate, options: OptimizeOptions, data: Inputs, work: Path) -> Path:
    """The student's model directory, distilled from the teacher."""
    model = work / "models" / candidate.name
    logger.info("%s: distilling into %s", candidate.name, model)
    training = {**options.training, "overwrite": True, "resume": False}
    if data.eval_file is not None:
        training["eval_file"] = data.eval_file  # else the teacher's split, which distill keeps
    config = json.loads((options.model_dir / "config.json").read_text(encoding="utf-8"))
    hidden = int(config.get("hidden_size") or config.get("dim") or STATIC_DIMS)
    distill(DistillOptions(options.model_dir, model, layers=candidate.layers, static=candidate.static,
                           static_dims=min(STATIC_DIMS, hidden), train_file=data.train_file,
                           max_accuracy_drop=NO_GUARD, training=training))
    return model


def _export(name: str, model: Path, options: OptimizeOptions, data: Inputs, work: Path) -> Path:
    """The candidate's export directory: its variants, each guarded against its own model on the scored texts."""
    exported = work / "exports" / name
    logger.info("%s: exporting into %s", name, exported)
    export(ExportOptions(model_dir=model, output_dir=exported, max_accuracy_drop=options.max_accuracy_drop,
                         eval_file=data.scored_on, overwrite=True, progress=logger.isEnabledFor(logging.INFO)))
    return exported


def _bench(options: OptimizeOptions, data: Inputs, made: dict[str, Path], work: Path):
    """One bench run: the teacher's export, every other candidate's beside it, the same cells and texts."""
    others = [path for name, path in made.items() if name != TEACHER]
    return bench(BenchOptions(artifact_dir=made[TEACHER], compare=others, batch_sizes=options.batch_sizes,
                              seq_lengths=[] if options.texts else [options.seq_length], texts_file=options.texts,
                              natural_lengths=options.texts is not None, eval_file=data.scored_on,
                              runs=options.runs, record=False, json_file=work / "bench.json",
                              progress=logger.isEnabledFor(logging.INFO)))


def _report(options: OptimizeOptions, data: Inputs, result, made: dict[str, Path], rejected: list,
            log: list) -> dict:
    """report.json: the bound, every engine's score and p50 per cell (PyTorch and bench's router aside), the choice
    per cell, the candidate kept, the rejected ones, what each took, the machine."""
    label = {str(path): name for name, path in made.items()}
    length = NATURAL if options.texts else options.seq_length
    inputs = NATURAL if options.texts else f"{options.seq_length} tokens"
    reference = next(e for e in result.engines if e.name == PYTORCH_PREFIX and label.get(e.artifact) == TEACHER)
    metric = "micro_f1" if result.multi_label else "accuracy"
    engines = []
    for engine in result.engines:
        variant = engine.name.split(":", 1)[-1]
        if variant.startswith(PYTORCH_PREFIX) or variant == ROUTER:
            continue
        timed = [t for t in result.timings if t.engine == engine.name and t.inputs == inputs]
        score = engine.headline
        within = score is not None and judge_drop(reference.headline, score, options.max_accuracy_drop).within
        engines.append({"candidate": label[engine.artifact], "variant": variant, "score": score, "within": within,
                        "size_bytes": engine.size_bytes,
                        "p50_ms": {reporting.cell_key(t.batch_size, length): t.p50_ms for t in timed},
                        "padded_tokens": {reporting.cell_key(t.batch_size, length): t.padded_tokens for t in timed}})
    sizes = sorted({t.batch_size for t in result.timings if t.inputs == inputs})
    cells = [reporting.cell_key(b, length) for b in sizes]
    chosen = choose(engines, cells)
    return {"model": str(options.model_dir), "eval_file": str(data.scored_on), "eval_texts": result.eval_texts,
            "bound": {"metric": metric, "reference": reference.headline,
                      "max_accuracy_drop": options.max_accuracy_drop,
                      "floor": reference.headline - options.max_accuracy_drop / 100},
            "cells": [{"batch_size": b, "seq_length": length} for b in sizes], "inputs": inputs,
            "texts": None if options.texts is None else str(options.texts), "runs": options.runs,
            "threads": result.threads, "engines": engines, "chosen": chosen, "rejected": rejected,
            "candidates": log, "export": {"candidate": kept_candidate(chosen, cells),
                                          "path": str(options.output_dir / "model")},
            "machine": result.machine}


def _ship(exported: Path, destination: Path, report: dict) -> None:
    """The kept candidate's export at `destination` (replacing an earlier run's only once complete), the whole
    report in its manifest (`extra["optimize"]`), and the ranges `backend="auto"` routes by taken from this run's
    timings of its variants within the bound."""
    with staging_dir(destination) as staging:
        shutil.copytree(exported, staging, dirs_exist_ok=True)
        manifest = ExportManifest.read(staging)
        dataclasses.replace(manifest, auto=_routes(report, manifest) or manifest.auto,
                            extra={**manifest.extra, "optimize": report}).write(staging)


def _routes(report: dict, manifest: ExportManifest) -> AutoSection | None:
    """The kept candidate's `auto` section from the report: each of its variants' p50 per batch size in padded
    tokens, routed among those within the bound (None: none is, and the export's own ranges stay)."""
    kept = report["export"]["candidate"]
    mine = [e for e in report["engines"] if e["candidate"] == kept and e["variant"] in manifest.variants]
    eligible = [e["variant"] for e in mine if e["within"]]
    if not eligible:
        return None
    p50 = size_p50([(e["variant"], e["padded_tokens"][cell], ms) for e in mine for cell, ms in e["p50_ms"].items()])
    backends = {name: manifest.variants[name].backend for name in p50}
    return auto_section(p50, eligible, backends, "optimize", report["inputs"], report["threads"])
