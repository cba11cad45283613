"""What each install costs: the runtime (`pip install .`), with serving, and with training.

Three fresh venvs built from this checkout, timed on the export of the MiniLM of benchmarks/minilm_demo.py
(all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about 10 minutes on 2 cores): `.` (predictor
and `bertdeploy predict`), `.[serve]` (plus FastAPI, uvicorn, prometheus-client) and `.[train,serve]` (plus PyTorch
2.13.0 CPU, transformers, onnx, onnxscript, datasets, accelerate; torch installed first, as the set-up scripts do). For
each: its size on disk, its packages, the time to import the predictor, and a fresh process's time from spawn to
the first label printed, with `--backend onnxruntime` (as `predictor_speed.py` measures it), and `bertdeploy
predict` on one text as a whole process, exit included. The processes of the three venvs take turns
(timing.interleave), 7 rounds, medians. Writes benchmarks/results/install_footprint.json.

    python benchmarks/install_footprint.py [--artifacts runs/minilm-demo/onnx]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy.host import machine
from bertdeploy.timing import interleave, stopwatch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "install_footprint.json"
INSTALLS = {"runtime (pip install .)": ".", "runtime + serve": ".[serve]",
            "full (train + serve)": ".[train,serve]"}
TEXT = "这个手机很好用，电池也耐用。"
MINILM = minilm_demo.DEFAULT
FIRST_LABEL = ("from bertdeploy.predictor import Predictor\n"
               "p = Predictor.load({artifacts!r}, backend='onnxruntime')\n"
               "print(p.predict([{text!r}])[0].label, flush=True)")


def build(venv: Path, spec: str) -> float:
    """A fresh venv with `spec` installed from this checkout; the seconds pip took."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]

    def install() -> None:
        if "train" in spec:  # the CPU build first, as the set-up scripts do
            subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, f"{ROOT}{spec[1:]}"], check=True)

    return stopwatch(install)[1]


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def packages(venv: Path) -> list[str]:
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    return sorted(p["name"] for p in json.loads(listed))


def first_label(command: list[str], seconds: list[float], step: int) -> None:
    """Spawn to the first line on stdout, appended to `seconds`; the exit is not timed."""
    def spawn() -> tuple[subprocess.Popen, str]:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=tempfile.gettempdir())
        return child, child.stdout.readline().strip()

    (child, label), took = stopwatch(spawn)
    _, errors = child.communicate()
    if child.returncode != 0 or not label:
        raise SystemExit(f"{command[:3]} failed: {errors[-1500:]}")
    seconds.append(took)


def run(command: list[str], stdin: str | None, step: int) -> None:
    """One whole process, exit included; `step` is the harness's round."""
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"{command[:3]} failed: {done.stderr[-1500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    artifacts = str(args.artifacts.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        venvs = {name: Path(tmp) / f"venv{i}" for i, name in enumerate(INSTALLS)}
        figures = {}
        for name, spec in INSTALLS.items():
            seconds = build(venvs[name], spec)
            listed = packages(venvs[name])
            figures[name] = {"pip_install": spec, "install_seconds": seconds, "size_mb": size_mb(venvs[name]),
                             "packages": len(listed), "has_torch": "torch" in listed, "package_names": listed}
            print(f"{name:<34} {figures[name]['size_mb']:8.0f} MB {len(listed):4d} packages", flush=True)
        calls, labelled = {}, {name: [] for name in venvs}
        for name, venv in venvs.items():
            python = str(venv / "bin" / "python")
            calls[(name, "import")] = functools.partial(
                run, [python, "-c", "import bertdeploy.predictor; print(1)"], None)
            calls[(name, "first_label")] = functools.partial(
                first_label, [python, "-c", FIRST_LABEL.format(artifacts=artifacts, text=TEXT)], labelled[name])
            calls[(name, "cli")] = functools.partial(
                run, [str(venv / "bin" / "bertdeploy"), "-q", "predict", artifacts, "-", "--backend", "onnxruntime"],
                TEXT + "\n")
        samples = interleave(calls, args.rounds, warmup=1)
    for (name, what), ms in samples.items():
        seconds = labelled[name][1:] if what == "first_label" else [m / 1000 for m in ms]  # round 0: warm-up
        figures[name][f"{what}_s"] = float(np.median(seconds))
        figures[name][f"{what}_samples_s"] = [round(x, 4) for x in seconds]
    full = figures["full (train + serve)"]
    for name, f in figures.items():
        f["size_vs_full"] = f["size_mb"] / full["size_mb"]
        print(f"{name:<34} {f['size_mb']:8.0f} MB ({f['size_vs_full']:.2f} of full), {f['packages']} packages, "
              f"import {f['import_s']:.2f} s, first label {f['first_label_s']:.2f} s, CLI {f['cli_s']:.2f} s")
    RESULTS.write_text(json.dumps({"machine": machine(), "artifacts": str(args.artifacts), "rounds": args.rounds,
                                   "installs": figures}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
