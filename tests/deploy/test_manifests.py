"""deploy/: the Kubernetes manifests (deploy/kubernetes/: one model; deploy/kubernetes/repository/: a model
repository) and the KServe InferenceService (deploy/kserve/) that run the server image (deploy/Containerfile).

Each Kubernetes object must be valid against the API's schema, offline and strict (unknown fields refused), for the
oldest Kubernetes these files need (1.30: the preStop sleep action is on by default from there) and the newest the
validator knows; so must the KServe predictor's pod spec (skipped without kubernetes-validate, in the dev extra).
And the manifests must agree with the server they run: the probes and the metrics annotation name routes the app
has; the container port is the image's --port; the image's ENTRYPOINT plus the container's args parse as `bertdeploy
serve` options into valid ServeOptions, as the CLI builds them; the grace period covers the preStop pause, the drain
delay and the drain timeout, and the pause equals the delay; CPU request = limit = --threads (a whole multiple of
them for a repository, whose models share run slots); the security settings the image was built for (non-root 10001,
a read-only root with /tmp writable); the model (or the repository) read-only, where the args point. The two
Kubernetes servers live side by side: their objects' names differ, and neither's Service or PodDisruptionBudget
selects the other's pods.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
# Each Kubernetes server's folder, applied on its own (`kubectl apply -f FOLDER` does not descend): one model, and a
# model repository's server in a subfolder
FOLDERS = {"deployment": KUBERNETES, "repository": KUBERNETES / "repository"}
INFERENCE_SERVICE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
OLDEST = "1.30"  # lifecycle.preStop.sleep: beta and on by default in 1.30, GA in 1.34

# What deploy/Containerfile says, for as long as it is not there yet; once it is, the test reads it instead.
# TODO(lead): drop these when deploy/Containerfile is committed.
ENTRYPOINT = ["bertdeploy", "serve", "--host", "0.0.0.0", "--port", "8080"]
USER = "10001:10001"

KSERVE_MOUNT = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI's files
# The InferenceService predictor's own fields (KServe's ComponentExtensionSpec and its predictor kinds); the rest of
# the predictor is a Kubernetes PodSpec, inline.
KSERVE_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
                 "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
                 "autoScaling", "model", "storageUris", "workerSpec", "sklearn", "xgboost", "tensorflow", "pytorch",
                 "triton", "onnx", "huggingface", "pmml", "lightgbm", "paddle"}


def documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]


def kubernetes_documents(folder: Path = KUBERNETES) -> list[tuple[str, dict]]:
    """The objects of the manifests at the top of `folder` (not its subfolders), each with where it is."""
    found = [(f"{path.relative_to(KUBERNETES)}: {document.get('kind')}", document)
             for path in sorted(folder.glob("*.y*ml")) for document in documents(path)]
    assert found, f"no manifests in {folder}"
    return found


def one(kind: str, folder: Path = KUBERNETES) -> dict:
    matching = [document for _, document in kubernetes_documents(folder) if document.get("kind") == kind]
    assert len(matching) == 1, f"{len(matching)} {kind} objects in {folder}"
    return matching[0]


def inference_service() -> dict:
    (document,) = documents(INFERENCE_SERVICE)
    return document


def instruction(name: str) -> str | None:
    """The last `name` instruction of deploy/Containerfile (its final stage's), continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    found = [line.split(None, 1)[1].strip() for line in text.splitlines()
             if line.strip() and line.split(None, 1)[0].upper() == name and len(line.split(None, 1)) == 2]
    return found[-1] if found else None


def image_entrypoint() -> list[str]:
    if not CONTAINERFILE.exists():
        return ENTRYPOINT
    entrypoint = instruction("ENTRYPOINT")
    assert entrypoint and entrypoint.startswith("["), "deploy/Containerfile: ENTRYPOINT in JSON (exec) form"
    return json.loads(entrypoint)


def image_user() -> tuple[int, int]:
    user = (instruction("USER") if CONTAINERFILE.exists() else None) or USER
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: a numeric uid:gid, for runAsNonRoot to verify"
    return int(uid), int(gid)


@dataclass
class Server:
    """A pod spec that runs the server: a Deployment's (one model, or a repository), or the InferenceService's
    predictor."""

    name: str
    pod: dict
    container: dict
    annotations: dict  # the pod's


def deployment_server(name: str = "deployment") -> Server:
    """The server of the Deployment in FOLDERS[name]."""
    template = one("Deployment", FOLDERS[name])["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return Server(name, template["spec"], container, template["metadata"].get("annotations", {}))


def kserve_server() -> Server:
    predictor = inference_service()["spec"]["predictor"]
    pod = {key: value for key, value in predictor.items() if key not in KSERVE_FIELDS}
    (container,) = [c for c in pod["containers"] if c["name"] == "kserve-container"]
    return Server("kserve", pod, container, predictor.get("annotations", {}))


@pytest.fixture(params=[*FOLDERS, "kserve"])
def server(request) -> Server:
    return kserve_server() if request.param == "kserve" else deployment_server(request.param)


def serve_options(server: Server):
    """The ServeOptions the container's command line gives, built as `bertdeploy serve` builds them (unknown
    options, bad values and inconsistent settings fail here)."""
    from bertdeploy.cli import cli
    from bertdeploy.runtime.options import RuntimeOptions
    from bertdeploy.serve.httpapi import ServeOptions

    assert "command" not in server.container, f"{server.name}: `command` would replace the image's ENTRYPOINT"
    entrypoint = image_entrypoint()
    assert entrypoint[:2] == ["bertdeploy", "serve"]
    args = server.container.get("args", [])
    assert all(isinstance(arg, str) for arg in args), f"{server.name}: args must be strings (quote numbers)"
    try:
        # under the group's context, as the command line has it: the group's settings (help option names), which
        # click caches on the command, stay the group's for every later caller
        group = click.Context(cli, info_name="bertdeploy", **cli.context_settings)
        context = cli.commands["serve"].make_context("serve", entrypoint[2:] + args, parent=group)
    except click.ClickException as e:
        pytest.fail(f"{server.name}: `bertdeploy serve {' '.join(entrypoint[2:] + args)}`: {e.format_message()}")
    runtime, rest = RuntimeOptions.split(context.params)
    return ServeOptions(runtime=runtime, **rest)


@pytest.fixture
def app(server):
    """The app the server's options make, for its routes only (nothing is started, nothing read): one model on a
    stand-in predictor, or a repository not loaded yet."""
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from bertdeploy.serve.app import create_app
    from bertdeploy.serve.models import Models

    options = serve_options(server)
    if options.model_repository is not None:
        return create_app(Models(options, started=False))
    predictor = SimpleNamespace(labels=["negative", "positive"], pairs=False, max_batch_size=64, variant="auto",
                                scheme=None)
    return create_app(Models.single(predictor, options))


def served(app, path: str, method: str = "GET") -> bool:
    return any(method in getattr(route, "methods", ()) and route.path_regex.match(path) for route in app.routes)


def container_port(container: dict, port: int | str) -> int:
    """A port by number or by the name the container gives it."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def effective(server: Server, setting: str):
    """A securityContext setting as it applies to the container: its own, else the pod's."""
    own = server.container.get("securityContext", {})
    return own[setting] if setting in own else server.pod.get("securityContext", {}).get(setting)


def pre_stop_seconds(container: dict) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return pre_stop["sleep"]["seconds"]
    command = pre_stop["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep") and len(command) == 2, command
    return float(command[1])


def mount(server: Server, path: str) -> dict:
    """The volume mount that holds `path`."""
    holding = [m for m in server.container.get("volumeMounts", [])
               if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert holding, f"{server.name}: no volume mounted at {path}"
    return max(holding, key=lambda m: len(m["mountPath"]))


def volume(server: Server, name: str) -> dict:
    (found,) = [v for v in server.pod.get("volumes", []) if v["name"] == name]
    return found


# The schema


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_manifests_are_valid_kubernetes_objects(which):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the dev extra)")
    version = OLDEST if which == "oldest" else kubernetes_validate.latest_version()
    objects = [found for folder in FOLDERS.values() for found in kubernetes_documents(folder)]
    predictor = kserve_server()
    objects.append(("inferenceservice.yaml: the predictor's pod spec",
                    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bertdeploy-predictor"},
                     "spec": predictor.pod}))
    problems = []
    for where, document in objects:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")
    assert not problems, f"against Kubernetes {version}:\n" + "\n".join(problems)


def selectors(folder: Path) -> dict[str, dict]:
    """The label selectors of a folder's Deployment, Service and PodDisruptionBudget, by kind."""
    return {"Deployment": one("Deployment", folder)["spec"]["selector"]["matchLabels"],
            "Service": one("Service", folder)["spec"]["selector"],
            "PodDisruptionBudget": one("PodDisruptionBudget", folder)["spec"]["selector"]["matchLabels"]}


def pod_labels(folder: Path) -> dict:
    return one("Deployment", folder)["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("folder", FOLDERS.values(), ids=FOLDERS)
def test_the_kubernetes_objects(folder):
    kinds = [document["kind"] for _, document in kubernetes_documents(folder)]
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(kinds)
    for where, document in kubernetes_documents(folder):
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "bertdeploy", where


@pytest.mark.parametrize("folder", FOLDERS.values(), ids=FOLDERS)
def test_selectors_pick_the_servers_pods(folder):
    labels = pod_labels(folder)
    for kind, selector in selectors(folder).items():
        assert selector and selector.items() <= labels.items(), f"{kind}'s selector {selector} misses {labels}"


def test_the_servers_live_side_by_side():
    """Both folders applied to one namespace: no object replaces another, no Service or budget takes the other
    server's pods."""
    names = [(document["kind"], document["metadata"]["name"])
             for folder in FOLDERS.values() for _, document in kubernetes_documents(folder)]
    assert len(names) == len(set(names)), f"two objects of one kind and name: {sorted(names)}"
    for mine in FOLDERS.values():
        for other in FOLDERS.values():
            if other is not mine:
                for kind, selector in selectors(mine).items():
                    assert not selector.items() <= pod_labels(other).items(), (
                        f"{mine.relative_to(ROOT)}: the {kind}'s selector {selector} takes the pods of "
                        f"{other.relative_to(ROOT)}")


@pytest.mark.parametrize("name", FOLDERS)
def test_service_forwards_port_80_to_the_server(name):
    server = deployment_server(name)
    (port,) = one("Service", FOLDERS[name])["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == 80
    assert container_port(server.container, port["targetPort"]) == serve_options(server).port


# Both servers


def test_args_are_serve_options(server):
    options = serve_options(server)
    assert options.host == "0.0.0.0" and options.engine == "local"
    ports = [p["containerPort"] for p in server.container["ports"]]
    assert ports == [options.port] == [8080], f"{server.name}: the container's port is the image's --port"


def test_probes_ask_the_servers_health_routes(server, app):
    options = serve_options(server)
    container = server.container
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[name]["httpGet"]
        assert served(app, get["path"]), f"{server.name}: {name}: the server has no GET {get['path']}"
        assert container_port(container, get["port"]) == options.port, f"{server.name}: {name}'s port"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "a minute at least to load the model"


def test_metrics_are_scraped_from_the_server(server, app):
    annotations = server.annotations
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == serve_options(server).port
    assert served(app, annotations["prometheus.io/path"]), annotations["prometheus.io/path"]


def test_grace_period_covers_the_drain(server):
    options = serve_options(server)
    pause = pre_stop_seconds(server.container)
    assert pause == options.drain_delay, f"{server.name}: the preStop pause is the drain delay"
    # the preStop hook runs within the grace period, SIGTERM after it; then the process needs a moment to exit
    needed = pause + options.drain_delay + options.drain_timeout
    assert server.pod["terminationGracePeriodSeconds"] > needed, f"{server.name}: more than {needed} s needed"


def test_cpu_is_the_threads(server):
    """One model: CPU = --threads. A repository: a whole multiple of them, each a run slot its models share."""
    options = serve_options(server)
    resources = server.container["resources"]
    requests, limits = resources["requests"], resources["limits"]
    threads = options.runtime.threads
    assert threads is not None, f"{server.name}: --threads as the CPU limit"
    assert cpu_cores(requests["cpu"]) == cpu_cores(limits["cpu"]), f"{server.name}: CPU request = limit"
    slots = cpu_cores(limits["cpu"]) / threads
    if options.model_repository is None:
        assert slots == 1, f"{server.name}: CPU = --threads ({threads})"
    else:
        assert slots >= 1 and slots.is_integer(), f"{server.name}: CPU a whole multiple of --threads ({threads})"
    assert str(requests["memory"]) == str(limits["memory"]), "memory request = limit (Guaranteed QoS)"


def test_runs_as_the_images_user_on_a_read_only_root(server):
    uid, gid = image_user()
    assert effective(server, "runAsNonRoot") is True
    assert effective(server, "runAsUser") == uid and effective(server, "runAsGroup") == gid
    assert effective(server, "seccompProfile") == {"type": "RuntimeDefault"}
    own = server.container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert "ALL" in own["capabilities"]["drop"]
    tmp = mount(server, "/tmp")
    assert tmp["mountPath"] == "/tmp" and not tmp.get("readOnly")
    assert "emptyDir" in volume(server, tmp["name"]), "/tmp (HOME) on an emptyDir"
    for each in server.container.get("volumeMounts", []):
        volume(server, each["name"])


def test_api_key_comes_from_a_secret(server):
    options = serve_options(server)
    if options.api_key_env is None:
        return  # the manifests show it commented out
    (env,) = [e for e in server.container.get("env", []) if e["name"] == options.api_key_env]
    reference = env["valueFrom"]["secretKeyRef"]
    assert not reference.get("optional"), "serve refuses to start without the key: a missing Secret should say so"


# Each server's model


@pytest.mark.parametrize("name", FOLDERS)
def test_deployment_reads_the_model_from_a_read_only_volume(name):
    server = deployment_server(name)
    options = serve_options(server)
    if name == "repository":
        assert options.model_repository is not None and options.artifact_dir is None, "--model-repository ROOT"
    else:
        assert options.model_repository is None, "one model directory"
    held = mount(server, str(options.model_repository or options.artifact_dir))
    assert held["readOnly"] is True
    claim = volume(server, held["name"])["persistentVolumeClaim"]
    assert claim["claimName"] and claim["readOnly"] is True


def test_repository_server_picks_up_versions_within_a_memory_guard():
    options = serve_options(deployment_server("repository"))
    assert options.poll is not None, "--poll: versions renamed into the volume are served without a restart"
    assert options.max_loaded_models is not None, "--max-loaded-models, the guard the memory limit is sized by"


def test_inference_service_is_a_v2_custom_predictor():
    service = inference_service()
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    # the preStop hook and the grace period need a plain Deployment: Knative's pod spec has neither
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")
    server = kserve_server()
    env = {e["name"]: e.get("value") for e in server.container.get("env", [])}
    assert env["PROTOCOL"] == "v2"
    options = serve_options(server)
    assert str(options.artifact_dir) == KSERVE_MOUNT and env["STORAGE_URI"], "the server reads what KServe downloads"
    assert options.model_name == service["metadata"]["name"], "/v2/models/<the InferenceService's name>/infer"
    assert not any(key.endswith("readonly") and value == "false" for key, value in
                   service["metadata"].get("annotations", {}).items()), "the model stays mounted read-only"
