"""What checking an export's files against the manifest's sha256 adds to `Predictor.load`, per variant.

For each shipped variant of an artifact directory (by default the export of the MiniLM of benchmarks/minilm_demo.py,
all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about 10 minutes on 2 cores):
`Predictor.load(dir, variant=v)` with verification (the default) and with `verify=False`, the two taking turns in an
order shuffled every round (timing.py), one warm-up round; and the hashing alone (the tokenizer and the variant's
file, as the load reads them). The page cache is warm after the first round, as it is for a server restarting on the
same machine; a cold first load also pays for reading the files, with or without verification. Writes
benchmarks/results/verify_cost.json.

    python benchmarks/verify_cost.py [--artifacts runs/minilm-demo/onnx] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import Predictor
from bertdeploy.artifacts import sha256_file
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.backends import OPENVINO, openvino_installed
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "verify_cost.json"
THREADS = 2
MINILM = minilm_demo.DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    manifest = ExportManifest.read(args.artifacts)
    tokenizer, files = manifest.files(args.artifacts)
    variants = [name for name, entry in manifest.variants.items() if entry.backend != OPENVINO or openvino_installed()]
    calls = {}
    for name in variants:
        for verify in (True, False):
            calls[(name, verify)] = lambda step, name=name, verify=verify: Predictor.load(
                args.artifacts, variant=name, threads=THREADS, verify=verify)
        calls[(name, "hash")] = lambda step, name=name: [sha256_file(tokenizer.path), sha256_file(files[name].path)]
    ms = interleave(calls, args.rounds, warmup=1)
    figures = {"machine": machine(threads=THREADS), "artifacts": str(args.artifacts), "rounds": args.rounds,
               "variants": {}}
    for name in variants:
        size = files[name].path.stat().st_size + tokenizer.path.stat().st_size
        median = {key: float(np.median(ms[(name, key)])) for key in (True, False, "hash")}
        figures["variants"][name] = {
            "bytes_hashed": size, "load_verified_ms": median[True], "load_unverified_ms": median[False],
            "verification_ms": median[True] - median[False], "hashing_alone_ms": median["hash"],
            "hash_mb_per_s": size / 1e6 / (median["hash"] / 1000)}
    args.output.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    for name, f in figures["variants"].items():
        print(f"{name:<12} {f['bytes_hashed'] / 1e6:7.1f} MB  load {f['load_unverified_ms']:8.1f} ms unverified, "
              f"{f['load_verified_ms']:8.1f} ms verified  (hashing alone {f['hashing_alone_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
