"""`bertdeploy serve --model-repository`: a model reloaded ten times under load, and the memory of several models.

Reloads: a repository holding one model, `reviews` (an export, hard-linked: by default the demo's, runs/demo/onnx
after `bash scripts/demo.sh`, multilingual-e5-small), served on loopback with `--threads 1`, so the model has one
core and this load generator the other. A closed loop of CONCURRENCY clients sends single-review POST /predict
requests naming the model (a new connection each, as serve_overload.py does) for PHASE_S seconds; then, with the
clients going on, a new version is copied in (under a temporary name, then renamed) and loaded with `POST
/v2/repository/models/reviews/load`, ten times one after the other; then PHASE_S seconds more. Reported: every
request's outcome (a failed request is anything but 200), p50 and p99 latency before, during (sent between the first
load's start and the last load's answer) and after, each load's time to its answer, and the server's peak RSS.

Memory: 1, 2 and 4 copies of the model (as many model names) in one repository server against as many one-model
servers (`serve DIR`), each model asked 20 requests first: resident memory (RSS; summed over the processes) and
proportional set size (PSS: a page shared by several processes, such as a library's, counted once in all),
after the requests. Same settings everywhere (`--threads 1`). Writes benchmarks/results/serve_reload.json.

    python benchmarks/serve_reload.py [--artifacts runs/demo/onnx] [--texts runs/demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bertdeploy.data import load_texts
from bertdeploy.host import machine

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import rss_mb  # noqa: E402
from serve_overload import Server, percentiles, post  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve_reload.json"
CONCURRENCY, RELOADS, PHASE_S = 16, 10, 10.0  # PHASE_S: the load before the reloads, and after them
MODELS = (1, 2, 4)
MODEL = "reviews"


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss")


def linked(source: Path, target: Path) -> Path:
    """`source` copied to `target` as a user should copy a version: under another name, then renamed."""
    staged = target.with_name(f".{target.name}.incoming")
    shutil.copytree(source, staged, copy_function=os.link)
    return staged.rename(target)


async def reloads(server: Server, artifacts: Path, root: Path, payloads: list[bytes], count: int,
                  seconds: float) -> dict:
    """The closed loop for `seconds`, then during `count` loads of a new version, then `seconds` more."""
    sent: list[tuple[float, int | str, float]] = []  # (when sent, status, seconds)
    stop, peak = asyncio.Event(), [rss_mb(server.process.pid)]

    async def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            at = time.perf_counter()
            status, took = await post(server.port, payloads[i % len(payloads)])
            sent.append((at, status, took))
            i += CONCURRENCY

    async def watch_rss() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(server.process.pid))
            await asyncio.sleep(0.25)

    clients = [asyncio.create_task(client(k)) for k in range(CONCURRENCY)] + [asyncio.create_task(watch_rss())]
    started = time.perf_counter()
    await asyncio.sleep(seconds)  # the clients run meanwhile: this is the phase's length
    during_from, loads = time.perf_counter(), []
    for version in range(2, count + 2):
        await asyncio.to_thread(linked, artifacts, root / MODEL / str(version))
        status, took = await post(server.port, b"", path=f"/v2/repository/models/{MODEL}/load")
        loads.append({"version": version, "status": status, "seconds": round(took, 2)})
        print("load", loads[-1], flush=True)
    during_to = time.perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    ended = time.perf_counter()
    await asyncio.gather(*clients)
    phases = {"before": (started, during_from), "during": (during_from, during_to), "after": (during_to, ended)}
    summary = {}
    for name, (low, high) in phases.items():
        chosen = [(status, took) for at, status, took in sent if low <= at < high]
        codes = Counter(str(status) for status, _ in chosen)
        ok_ms = np.array([took * 1000 for status, took in chosen if status == 200])
        summary[name] = {"requests": len(chosen), "failed": len(chosen) - codes["200"], "codes": dict(codes),
                         "seconds": round(high - low, 1), **percentiles(ok_ms)}
    return {"loads": loads, "phases": summary, "failed_requests": sum(p["failed"] for p in summary.values()),
            "peak_rss_mb": round(peak[0], 1)}


async def ask_each(port: int, models: list[str], payload: dict, repository: bool) -> None:
    for model in models:
        body = json.dumps({**payload, **({"model": model} if repository else {})}).encode()
        for _ in range(20):
            status, _ = await post(port, body)
            assert status == 200, status


def memory(artifacts: Path, root: Path, count: int, payload: dict) -> dict:
    """One repository server of `count` models against `count` one-model servers: RSS and PSS after 20 requests
    to each model."""
    names = [f"m{k}" for k in range(count)]
    repo = root / f"memory-{count}"
    for name in names:
        linked(artifacts, repo / name / "1")
    server = Server("--model-repository", str(repo))
    try:
        asyncio.run(ask_each(server.port, names, payload, True))
        together = {"rss_mb": round(rss_mb(server.process.pid), 1), "pss_mb": round(pss_mb(server.process.pid), 1)}
    finally:
        server.stop()
    servers = []
    try:
        for name in names:
            servers.append(Server(str(repo / name / "1")))
        for one in servers:
            asyncio.run(ask_each(one.port, [""], payload, False))
        apart = {"rss_mb": round(sum(rss_mb(s.process.pid) for s in servers), 1),
                 "pss_mb": round(sum(pss_mb(s.process.pid) for s in servers), 1)}
    finally:
        for one in servers:
            one.stop()
    result = {"models": count, "one_process": together, "processes": apart,
              "pss_ratio_processes_over_one": round(apart["pss_mb"] / together["pss_mb"], 2)}
    print("memory", json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("runs/demo/onnx"))
    parser.add_argument("--texts", type=Path, default=Path("runs/demo/data/test.csv"))
    parser.add_argument("--reloads", type=int, default=RELOADS)
    parser.add_argument("--seconds", type=float, default=PHASE_S, help="Of load before the reloads, and after.")
    parser.add_argument("--models", default=",".join(map(str, MODELS)))
    args = parser.parse_args()
    texts, _ = load_texts(args.texts)
    payloads = [json.dumps({"text": t, "model": MODEL}).encode() for t in texts]
    with tempfile.TemporaryDirectory(dir=args.artifacts.parent) as temporary:  # the same file system: hard links
        root = Path(temporary)
        linked(args.artifacts, root / "reload" / MODEL / "1")
        server = Server("--model-repository", str(root / "reload"))
        try:
            reloading = asyncio.run(reloads(server, args.artifacts, root / "reload", payloads, args.reloads,
                                            args.seconds))
        finally:
            server.stop()
        print("reloads", json.dumps(reloading["phases"]), flush=True)
        footprint = [memory(args.artifacts, root, int(count), {"text": texts[0]}) for count in args.models.split(",")]
    results = {"machine": machine(threads=1), "artifacts": str(args.artifacts), "texts": len(texts),
               "concurrency": CONCURRENCY, "server": "--threads 1, defaults otherwise (backend auto)",
               "reloads": reloading, "memory": footprint}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
