"""Run the server image as users run it and check it from this machine (called by scripts/test_image.sh).

The image's own entrypoint and user, with `buildah run` (chroot isolation: the server listens on this machine's
loopback), the export mounted read-only at /models/model: readiness, `/predict` and a KServe v2 infer whose answers
equal the in-process predictor's on the same export; inside, no root, no torch, transformers or onnx, no compiler,
and nothing written outside /tmp; SIGTERM: readiness turns 503 while requests are still answered, then a clean exit.
A model repository on a read-only volume with --poll: served, and a version copied in served without a restart.
A directory that is no export: one line, a non-zero exit, never ready. Exits 1 with what failed.

    python scripts/check_image.py IMAGE EXPORT_DIR
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bertdeploy import Predictor

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
TEXTS = ["这产品太差了", "质量很好，物流也快", "good", "一般般吧，没什么特别的", "bad value for money"]
STARTUP_S, DRAIN_DELAY = 180, 5


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], check=True, capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"check_image.py: {what}")
    print(f"ok: {what}", file=sys.stderr)


def poll(condition, seconds: float, what: str, alive=None) -> None:
    """Wait until `condition()` holds (every 0.2 s, at most `seconds`; giving up at once if `alive()` turns false)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if alive is not None and not alive():
            raise SystemExit(f"check_image.py: the server exited before {what}")
        time.sleep(0.2)
    raise SystemExit(f"check_image.py: no {what} within {seconds:.0f} s")


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def start(image: str, model: Path, port: int, mount: str = "/models/model",
          args: list[str] | None = None) -> tuple[str, subprocess.Popen]:
    """The image's entrypoint and command (or `args` in its place, as Kubernetes' args), on `port`, as its user,
    with `model` mounted read-only at `mount`."""
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    container = buildah("from", "--quiet", "--pull-never", image)
    command = [*config["Entrypoint"], "--port", str(port), *(config["Cmd"] if args is None else args)]
    server = subprocess.Popen([*BUILDAH, "run", "--isolation", "chroot", "-v", f"{model}:{mount}:ro",
                               container, "--", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return container, server


def inside(container: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", container, "--", *command],
                          capture_output=True, text=True)


def server_pid(port: int) -> int:
    """The server's process (chroot isolation shares this machine's process table)."""
    found = subprocess.run(["pgrep", "-f", f"bertdeploy serve .*--port {port}"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    check(len(pids) >= 1, f"the server's process is found (pgrep: {found.stdout.split()})")
    return max(pids)  # buildah's own command line names the port too; the server is its newest descendant


def check_serving(image: str, model: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    container, server = start(image, model, port)
    try:
        root = Path(buildah("mount", container))
        marker = time.time()
        poll(lambda: status(f"{base}/v2/health/ready") == 200, STARTUP_S, "readiness",
             alive=lambda: server.poll() is None)
        check(True, f"ready on port {port}")
        reference = Predictor.load(model)
        answer = httpx.post(f"{base}/predict", json={"texts": TEXTS, "all_scores": True}, timeout=30).json()
        expected = reference.predict_proba(TEXTS)
        got = np.array([[p["scores"][label] for label in reference.labels] for p in answer["predictions"]])
        labels = [p["label"] for p in answer["predictions"]]
        check(labels == [reference.labels[i] for i in expected.argmax(-1)], f"/predict labels equal the "
              f"in-process predictor's ({labels})")
        check(np.allclose(got, expected, atol=1e-4),
              f"/predict scores equal the in-process predictor's (max |d| {np.abs(got - expected).max():.1e})")
        name = httpx.post(f"{base}/v2/repository/index", timeout=5).json()[0]["name"]
        infer = httpx.post(f"{base}/v2/models/{name}/infer", timeout=30, json={
            "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]}).json()
        outputs = {o["name"]: o for o in infer["outputs"]}
        probabilities = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(len(TEXTS), -1)
        check(np.allclose(probabilities, expected, atol=1e-4),
              f"KServe v2 infer equals the in-process predictor (max |d| {np.abs(probabilities - expected).max():.1e})")
        check(outputs["label"]["data"] == labels, "KServe v2 labels equal /predict's")
        check_inside(container, root, marker)
        pid = server_pid(port)
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        poll(lambda: status(f"{base}/v2/health/ready") == 503, DRAIN_DELAY, "readiness 503 after SIGTERM")
        check(httpx.post(f"{base}/predict", json={"text": TEXTS[0]}, timeout=10).status_code == 200,
              "requests are still answered while draining")
        _, said = server.communicate(timeout=DRAIN_DELAY + 60)
        took = time.monotonic() - signalled
        print(said, file=sys.stderr)
        # uvicorn re-raises SIGTERM once it has shut down, so the server ends by that signal (143 under Docker and
        # Kubernetes), which buildah reports as "exited on terminated"
        by_signal = server.returncode == 0 or "subprocess exited on terminated" in said
        check(by_signal and "Traceback" not in said and took >= DRAIN_DELAY - 0.5,
              f"a clean exit after the drain ({took:.1f} s after SIGTERM, status {server.returncode})")
    finally:
        kill_server(server, port)
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)


def kill_server(server: subprocess.Popen, port: int) -> None:
    """Whatever still runs of the server on `port`: buildah's process and the server's own, which chroot isolation
    does not tie together (killing the first leaves the second running)."""
    subprocess.run(["pkill", "-KILL", "-f", f"bertdeploy serve .*--port {port}"], capture_output=True)
    server.wait(30)


def check_inside(container: str, root: Path, marker: float) -> None:
    check(inside(container, "id", "-u").stdout.strip() == "10001", "the server runs as user 10001, not root")
    heavy = inside(container, "python3", "-c", "import importlib.util as u; print([m for m in ('torch', "
                   "'transformers', 'onnx', 'datasets', 'optimum') if u.find_spec(m)])").stdout.strip()
    check(heavy == "[]", f"no torch, transformers, onnx, datasets or optimum in the image ({heavy})")
    compilers = inside(container, "sh", "-c", "command -v gcc cc c++ clang || true").stdout.strip()
    check(not compilers, f"no compiler in the image ({compilers or 'none'})")
    skip = ("tmp", "proc", "sys", "dev", "run", "etc/hosts", "etc/resolv.conf", "etc/hostname", "models")
    written = [str(p.relative_to(root)) for p in root.rglob("*")
               if not str(p.relative_to(root)).startswith(skip) and not p.is_symlink() and p.stat().st_mtime > marker]
    check(not written, f"nothing written outside /tmp while serving ({written[:5]})")


def check_repository(image: str, model: Path) -> None:
    """A model repository on a read-only volume, with --poll: the model serves, and a version copied in on this
    machine (under a temporary name, renamed) is served without a restart."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(model, Path(root) / "tiny" / "1")
        readable(Path(root))
        container, server = start(image, Path(root), port, "/models", ["--model-repository", "/models", "--poll",
                                                                        "0.5"])
        try:
            poll(lambda: status(f"{base}/v2/health/ready") == 200, STARTUP_S, "readiness of a model repository",
                 alive=lambda: server.poll() is None)

            def version() -> int | None:
                answer = httpx.post(f"{base}/predict", json={"text": TEXTS[0], "model": "tiny"}, timeout=30)
                return answer.json().get("version") if answer.status_code == 200 else None

            check(version() == 1, "a model repository's model answers, version 1")
            shutil.copytree(model, Path(root) / "tiny" / ".2.incoming")
            readable(Path(root))
            (Path(root) / "tiny" / ".2.incoming").rename(Path(root) / "tiny" / "2")
            poll(lambda: version() == 2, 60, "version 2 served after it was copied in",
                 alive=lambda: server.poll() is None)
            check(True, "a version copied into the volume is served without a restart (--poll)")
        finally:
            kill_server(server, port)
            subprocess.run([*BUILDAH, "rm", container], capture_output=True)


def readable(root: Path) -> None:
    """Every folder and file under `root` readable by the image's user."""
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def check_bad_model(image: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as empty:
        os.chmod(empty, 0o755)  # readable by the image's user: a directory that is no export, not a denied one
        (Path(empty) / "notes.txt").write_text("no export here\n")
        container, server = start(image, Path(empty), port)
        ready = []
        try:
            while server.poll() is None:
                ready.append(status(f"http://127.0.0.1:{port}/v2/health/ready") == 200)
                time.sleep(0.2)
                if len(ready) > STARTUP_S * 5:
                    raise SystemExit("check_image.py: a bad model directory did not stop the server")
        finally:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True)
        said = [line for line in server.stderr.read().splitlines()  # less buildah's own report of the exit
                if line.strip() and not re.match(r"subprocess exited|Error: exit status \d+$", line)]
        check(server.returncode != 0, f"a bad model directory exits non-zero (status {server.returncode})")
        check(len(said) == 1 and said[0].startswith("Error:"), f"with one line ({said})")
        check(not any(ready), "and was never ready")


if __name__ == "__main__":
    image, model = sys.argv[1], Path(sys.argv[2]).absolute()
    check_serving(image, model)
    check_repository(image, model)
    check_bad_model(image)
