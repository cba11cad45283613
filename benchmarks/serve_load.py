"""`bertdeploy serve` under load on loopback: dynamic batching against batching switched off, and RSS over time.

Two servers of the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on
first use, about 10 minutes on 2 cores) run side by side on loopback:
  batching   the defaults (--max-batch-size 64, --max-wait-ms 5)
  off        --max-batch-size 1: every text runs alone
A bounded asyncio load generator (httpx, keep-alive, one review per request, real reviews from
the test file) drives one server at a time at concurrency 1, 8 and 32; each level runs twice per
server in the order batching, off, off, batching, so drift does not favour one. Reported per
server and level: requests/s, p50/p90/p99 latency, errors. Then 20,000 requests at concurrency 8
against the batching server, its RSS read from /proc every 1,000: growth after warm-up.
Writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py [--artifacts runs/minilm-demo/onnx] [--texts runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import minilm_demo
import numpy as np

from bertdeploy.data import load_texts
from bertdeploy.host import machine

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
LEVELS = {1: 300, 8: 1500, 32: 3000}  # concurrency -> requests per repetition
SOAK_REQUESTS, SOAK_STEP = 20_000, 1_000
MINILM = minilm_demo.DEFAULT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(artifacts: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bertdeploy", "-q", "serve", str(artifacts), "--port", str(port),
                                *extra])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{extra}: the server did not become ready")


async def load(url: str, texts: list[str], requests: int, concurrency: int, offset: int = 0) -> dict:
    """`requests` single-text POST /predict, `concurrency` at a time; latency of each, wall time of all."""
    latencies, errors, next_index = [], 0, 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < requests:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                response = await client.post("/predict", json={"text": texts[(offset + i) % len(texts)]})
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"requests": requests, "seconds": wall, "errors": errors, "latencies_ms": latencies}


def summary(runs: list[dict]) -> dict:
    ms = np.concatenate([r["latencies_ms"] for r in runs])
    return {"requests": int(sum(r["requests"] for r in runs)), "errors": int(sum(r["errors"] for r in runs)),
            "requests_per_s": sum(r["requests"] for r in runs) / sum(r["seconds"] for r in runs),
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--texts", type=Path, default=MINILM / "data" / "test.csv")
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.texts == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    texts, _ = load_texts(args.texts)
    servers = {"batching": start(args.artifacts), "off": start(args.artifacts, "--max-batch-size", "1")}
    try:
        results: dict = {"levels": {}, "machine": machine(), "texts": len(texts),
                         "servers": {"batching": "defaults: --max-batch-size 64 --max-wait-ms 5, 1,024-token budget",
                                     "off": "--max-batch-size 1"}}
        for concurrency, requests in LEVELS.items():
            runs: dict[str, list] = {name: [] for name in servers}
            for name in ("batching", "off", "off", "batching"):
                runs[name].append(asyncio.run(load(servers[name][1], texts, requests, concurrency)))
            results["levels"][concurrency] = {name: summary(r) for name, r in runs.items()}
            print(concurrency, json.dumps(results["levels"][concurrency]), flush=True)

        process, url = servers["batching"]
        rss = [rss_mb(process.pid)]
        for step in range(SOAK_REQUESTS // SOAK_STEP):
            asyncio.run(load(url, texts, SOAK_STEP, 8, offset=step * SOAK_STEP))
            rss.append(rss_mb(process.pid))
        warm = rss[1]  # after the first 1,000 requests
        results["soak"] = {"requests": SOAK_REQUESTS, "concurrency": 8, "rss_mb_every_1000": rss,
                           "growth_after_warm_up": rss[-1] / warm - 1}
        print("soak", json.dumps(results["soak"]), flush=True)
        metrics = httpx.get(f"{url}/metrics").text
        results["batching_metrics"] = [line for line in metrics.splitlines()
                                       if line.startswith(("bertdeploy_batch_size_", "bertdeploy_batch_tokens_"))]
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
