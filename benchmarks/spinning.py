"""Single texts on ONNX Runtime: latency by spinning policy, against Optimum's pipeline, and the CPU an idle
process burns after a burst.

The `int8` (the ONNX Runtime default variant, the very file Optimum's pipeline loads) of the MiniLM of
benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about 10 minutes on
2 cores), 2 threads. (1) One review at a time, text in -> label out: the predictor with each spinning policy
(`spinning=True`, the default, as ONNX Runtime's and so Optimum's: the intra-op threads spin a moment after each
call; `False`: they never spin) and Optimum's `ORTModelForSequenceClassification` pipeline, each labelling blocks of
25 consecutive reviews one call at a time (a stream of requests, where spinning threads catch the next call), the
blocks taking turns (timing.interleave), 400 reviews after 20 warm-up calls each; the median of the calls. (2) Idle
CPU: a fresh process per policy runs a burst of 200 single reviews, then its CPU time over the next 2 seconds of
idling is read (share of one core). Writes benchmarks/results/spinning.json. Optimum's pipeline needs a venv of its
own (see predictor_speed.py; make the MiniLM first in bertdeploy's venv).

    python benchmarks/spinning.py [--model runs/minilm-demo/model] [--artifacts runs/minilm-demo/onnx]
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
from predictor_speed import BLOCK, optimum_dir, stream_block

from bertdeploy import Predictor
from bertdeploy.demo.packaged import review_texts
from bertdeploy.host import machine
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "spinning.json"
THREADS = 2
POLICIES = {"on (default, as ONNX Runtime's)": (True, THREADS), "off": (False, THREADS),
            "off, 1 thread": (False, 1)}
TRICKLE_GAP_S = 0.1
MINILM = minilm_demo.DEFAULT
IDLE = """
import json, sys, time
from bertdeploy import Predictor
p = Predictor.load(sys.argv[1], variant=sys.argv[2], threads=int(sys.argv[5]), spinning=sys.argv[3] == "True")
texts = json.loads(sys.argv[4])
for text in texts:
    p.predict([text])
busy = time.process_time()
time.sleep(2.0)  # the measurement itself: CPU burnt while idle
idle = (time.process_time() - busy) / 2.0
busy, start = time.process_time(), time.perf_counter()
for text in texts[:20]:  # a trickle: one request every {gap} s
    p.predict([text])
    time.sleep({gap})
trickle = (time.process_time() - busy) / (time.perf_counter() - start)
print(json.dumps({{"idle_core_share": idle, "trickle_core_share": trickle}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MINILM / "model")
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    args = parser.parse_args()
    if args.model == MINILM / "model" or args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    torch.set_num_threads(THREADS)
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    variant = "int8"
    texts = [t for group in review_texts().values() for t in group]
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), 420, replace=False)]
    with tempfile.TemporaryDirectory() as tmp:
        file = manifest["variants"][variant]["file"]
        ort_model = ORTModelForSequenceClassification.from_pretrained(
            optimum_dir(args.model, args.artifacts, file, Path(tmp)), file_name=file)
        optimum = pipeline("text-classification", model=ort_model, tokenizer=AutoTokenizer.from_pretrained(args.model))
        candidates = {f"predictor, spinning {name}": functools.partial(
            lambda p, t: p.predict([t])[0].label,
            Predictor.load(args.artifacts, variant=variant, threads=policy[1], spinning=policy[0]))
            for name, policy in POLICIES.items()}
        candidates["Optimum ORT pipeline, same file"] = \
            lambda t: optimum(t, truncation=True, max_length=manifest["max_length"])[0]["label"]
        for label_of in candidates.values():
            for text in texts[:20]:
                label_of(text)
        ms = {name: [] for name in candidates}
        interleave({name: functools.partial(stream_block, label_of, texts[20:], ms[name])
                    for name, label_of in candidates.items()}, (len(texts) - 20) // BLOCK)
    single = {name: {"median_ms": float(np.median(m)), "p90_ms": float(np.percentile(m, 90)),
                     "p99_ms": float(np.percentile(m, 99)), "calls": len(m)} for name, m in ms.items()}
    optimum_ms = single["Optimum ORT pipeline, same file"]["median_ms"]
    idle = {}
    for name, policy in POLICIES.items():
        done = subprocess.run([sys.executable, "-c", IDLE.format(gap=TRICKLE_GAP_S),
                               str(args.artifacts), variant,
                               str(policy[0]), json.dumps(texts[:200], ensure_ascii=False), str(policy[1])],
                              capture_output=True, text=True, check=True)
        idle[name] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, figures in single.items():
        figures["optimum_over_this"] = optimum_ms / figures["median_ms"]
        policy = name.removeprefix("predictor, spinning ")
        figures["idle_core_share_after_burst"] = idle[policy]["idle_core_share"] if policy in idle else None
        figures["core_share_in_a_trickle"] = idle[policy]["trickle_core_share"] if policy in idle else None
        print(f"{name:<52} {figures['median_ms']:6.2f} ms median, Optimum / this {figures['optimum_over_this']:.2f}x"
              + (f", idle CPU {idle[policy]['idle_core_share']:.1%} of a core, in a trickle "
                 f"{idle[policy]['trickle_core_share']:.1%}" if policy in idle else ""))
    RESULTS.write_text(json.dumps({"machine": machine(threads=THREADS), "variant": variant, "single_text": single},
                                  indent=1) + "\n")


if __name__ == "__main__":
    main()
