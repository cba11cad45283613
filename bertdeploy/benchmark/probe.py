"""Load time and peak memory of one `bench` engine alone, measured in a fresh Python process.

`probe` starts `python -m bertdeploy.benchmark.probe ENGINE_JSON FEEDS_NPZ`, which loads the engine,
runs each case's first batch once and prints its load time and its own peak RSS, so one engine's
memory never counts against another's.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bertdeploy.benchmark.engines import Engine
from bertdeploy.benchmark.report import EngineReport
from bertdeploy.errors import BertdeployError
from bertdeploy.timing import stopwatch

logger = logging.getLogger(__name__)


def probe(engine: Engine, feeds: Path) -> EngineReport:
    """Load time and peak RSS of `engine` alone, in a fresh Python process that loads it and runs each case's
    first batch (saved in `feeds`) once."""
    logger.info("measuring load time and memory of %s in a separate process", engine.name)
    done = subprocess.run([sys.executable, "-m", "bertdeploy.benchmark.probe", json.dumps(asdict(engine)), str(feeds)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BertdeployError(f"{engine.name}: the memory probe failed:\n{tail}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return EngineReport(name=engine.name, backend=engine.backend, kind=engine.kind, device=engine.device,
                        path=engine.path, size_bytes=engine.size_bytes(), load_s=figures["load_s"],
                        peak_rss_mb=figures["peak_rss_mb"], artifact=engine.artifact)


def main(engine_json: str, feeds_path: str) -> None:
    runner, load_s = stopwatch(Engine(**json.loads(engine_json)).load)
    arrays = np.load(feeds_path)
    feeds: dict[str, dict] = {}
    for key in arrays.files:
        case, name = key.split("/")
        feeds.setdefault(case, {})[name] = arrays[key]
    for feed in feeds.values():
        runner.run_prepared(runner.prepare(feed))
    print(json.dumps({"load_s": load_s, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's own high-water mark (ru_maxrss of a child would carry its parent's RSS from the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
