"""`bertdeploy serve` past its capacity: open-loop load from 1x to 10x what it can answer, then recovery.

One server of an exported classifier (by default the MiniLM of benchmarks/minilm_demo.py, all-MiniLM-L6-v2
fine-tuned on the demo's reviews; made on first use, about 10 minutes on 2 cores) runs on loopback with
`--threads 1`, so the model has one core and the event loop and this load generator share the
other. First its capacity: single-review POST /predict requests, 64 at a time (closed loop), for a
few seconds. Then, per server configuration, open-loop phases: requests are sent on a fixed
schedule whatever the answers (a new connection each, as a load balancer's surge looks), at 0.5x
(the baseline), 1x, 2x, 5x and 10x the capacity, each for PHASE_S seconds and each followed at once,
with the backlog it left, by RECOVERY_S seconds at 0.5x, cut into one-second windows of sending.
Reported per phase: requests offered and actually sent (this generator is Python on a shared core:
when it falls behind the schedule, the figures say so), the share answered 200, p50/p99 latency of
those, refusals by status code, connection errors, the server's peak RSS; per recovery: p99 of each
window and the seconds until a window's p99 is back within twice the baseline's. Configurations: the
defaults, and a queue and deadline sized from the measured capacity (docs/serve.md explains the sizing).
Writes benchmarks/results/serve_overload.json.

    python benchmarks/serve_overload.py [--artifacts runs/minilm-demo/onnx] [--texts runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bertdeploy.data import load_texts
from bertdeploy.host import machine

sys.path.insert(0, str(Path(__file__).parent))
import minilm_demo  # noqa: E402
from serve_load import free_port, rss_mb  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve_overload.json"
FACTORS = (1, 2, 5, 10)
PHASE_S, RECOVERY_S, BASELINE_S = 6.0, 10.0, 6.0  # --phase-seconds scales all three (a smoke run: 1)
CLIENT_TIMEOUT_S = 60.0
MINILM = minilm_demo.DEFAULT
MAX_OUTSTANDING = 3000  # the generator's own bound on open requests: beyond it a request is counted unsent


class Server:
    """`bertdeploy serve ARTIFACTS EXTRA... --threads 1` on a free port, once ready (ARTIFACTS may be an option:
    `Server("--model-repository", root)`)."""

    def __init__(self, artifacts: Path | str, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "bertdeploy", "-q", "serve", str(artifacts), *extra,
                                         "--port", str(self.port), "--threads", "1"])
        deadline = time.monotonic() + 120
        while asyncio.run(post(self.port, b"", path="/v2/health/ready", method="GET"))[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{extra}: the server did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def post(port: int, body: bytes, path: str = "/predict", method: str = "POST") -> tuple[int | str, float]:
    """One request on a new connection: (status code or error kind, seconds). Raw HTTP/1.1, so the generator
    spends as little of the shared CPU as it can."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect-error", time.perf_counter() - started
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        status_line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT_S)
        await asyncio.wait_for(reader.read(), CLIENT_TIMEOUT_S)
        parts = status_line.split()
        return (int(parts[1]) if len(parts) > 1 else "closed"), time.perf_counter() - started
    except TimeoutError:
        return "client-timeout", time.perf_counter() - started
    except OSError:
        return "reset", time.perf_counter() - started
    finally:
        writer.close()


def bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"text": t}).encode() for t in texts]


async def capacity(port: int, payloads: list[bytes], seconds: float = 6.0, concurrency: int = 64) -> float:
    """Answered requests per second at saturation (closed loop, `concurrency` at a time)."""
    done, stop = [0], time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            status, _ = await post(port, payloads[i % len(payloads)])
            done[0] += status == 200
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done[0] / (time.perf_counter() - started)


async def open_loop(port: int, payloads: list[bytes], segments: list[tuple[float, float]], pid: int) -> list[dict]:
    """Requests on schedule, segment after segment without a pause ((rate per second, seconds) each), whatever
    the answers; then the wait for the last answers. Per segment: what came back for the requests sent in it,
    p99 per one-second window of sending, and the server's peak RSS over the whole run."""
    results: list[tuple[int, float, int | str, float]] = []  # (segment, send time in it, status, seconds)
    outstanding, unsent, peak_rss = set(), Counter(), [rss_mb(pid)]

    async def one(i: int, segment: int, sent_at: float) -> None:
        status, took = await post(port, payloads[i % len(payloads)])
        results.append((segment, sent_at, status, took))

    async def watch_rss() -> None:
        while True:
            peak_rss[0] = max(peak_rss[0], rss_mb(pid))
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch_rss())
    sending = []
    for segment, (rate, seconds) in enumerate(segments):
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            if (wait := start + i / rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            if len(outstanding) >= MAX_OUTSTANDING:
                unsent[segment] += 1
                continue
            task = asyncio.create_task(one(i, segment, time.perf_counter() - start))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        sending.append(time.perf_counter() - start)
    if outstanding:
        await asyncio.wait(outstanding)
    watcher.cancel()
    return [summarize([r[1:] for r in results if r[0] == k], int(rate * seconds), unsent[k], sending[k], seconds,
                      peak_rss[0]) for k, (rate, seconds) in enumerate(segments)]


def summarize(results: list, offered: int, unsent: int, sending: float, seconds: float, peak_rss: float) -> dict:
    codes = Counter(str(status) for _, status, _ in results)
    ok_ms = np.array([took * 1000 for _, status, took in results if status == 200])
    windows = [np.array([took * 1000 for sent_at, status, took in results if status == 200 and w <= sent_at < w + 1])
               for w in range(int(seconds))]
    return {"offered": offered, "offered_per_s": offered / seconds, "sent": len(results), "unsent": unsent,
            "sent_per_s": len(results) / sending if sending else 0.0,
            "accepted_share": codes["200"] / max(offered, 1),
            "codes": dict(sorted(codes.items())), "peak_rss_mb": round(peak_rss, 1), **percentiles(ok_ms),
            "windows_p99_ms": [percentiles(w)["p99_ms"] for w in windows]}


def percentiles(ms: np.ndarray) -> dict:
    if not len(ms):
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def recovered_after(windows: list[float | None], baseline_p99: float) -> float | None:
    """Seconds from the burst's end until a one-second window's p99 is within twice the baseline's."""
    for second, p99 in enumerate(windows):
        if p99 is not None and p99 <= 2 * baseline_p99:
            return float(second)
    return None


def run_config(name: str, artifacts: Path, payloads: list[bytes], rate: float, extra: list[str],
               scale: float) -> dict:
    server = Server(artifacts, *extra)
    try:
        pid = server.process.pid
        asyncio.run(capacity(server.port, payloads, seconds=2.0))  # warm: allocations, caches
        [baseline] = asyncio.run(open_loop(server.port, payloads, [(0.5 * rate, BASELINE_S * scale)], pid))
        result = {"settings": extra or ["defaults"], "baseline_0.5x": baseline, "phases": {}}
        print(name, "baseline", json.dumps(baseline), flush=True)
        for factor in FACTORS:  # the burst, then at once 0.5x again: the backlog it left is part of the recovery
            burst, after = asyncio.run(open_loop(server.port, payloads, [(factor * rate, PHASE_S * scale),
                                                                         (0.5 * rate, RECOVERY_S * scale)], pid))
            burst["recovery"] = {"windows_p99_ms": after["windows_p99_ms"], "accepted_share": after["accepted_share"],
                                 "codes": after["codes"],
                                 "seconds_to_baseline_p99": recovered_after(after["windows_p99_ms"],
                                                                            baseline["p99_ms"])}
            result["phases"][f"{factor}x"] = burst
            print(name, f"{factor}x", json.dumps(burst), flush=True)
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--texts", type=Path, default=MINILM / "data" / "test.csv")
    parser.add_argument("--phase-seconds", type=float, default=PHASE_S)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.texts == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    scale = args.phase_seconds / PHASE_S
    texts, _ = load_texts(args.texts)
    payloads = bodies(texts)
    server = Server(args.artifacts)
    try:
        asyncio.run(capacity(server.port, payloads, seconds=2.0))
        rate = asyncio.run(capacity(server.port, payloads, seconds=6.0 * scale))
    finally:
        server.stop()
    print(f"capacity: {rate:.0f} requests/s", flush=True)
    sized_queue = max(16, int(rate * 0.5))  # half a second of work waiting, at most
    results = {"machine": machine(), "artifacts": str(args.artifacts), "texts": len(texts),
               "capacity_requests_per_s": rate, "phase_s": PHASE_S * scale, "recovery_s": RECOVERY_S * scale,
               "configs": {
                   "defaults": run_config("defaults", args.artifacts, payloads, rate, [], scale),
                   "sized": run_config("sized", args.artifacts, payloads, rate,
                                       ["--max-queue", str(sized_queue), "--max-texts-per-request",
                                        str(min(sized_queue, 256)), "--request-timeout", "1"], scale)}}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
