"""What cutting long texts before tokenizing saves: the predictor on long news articles, cut and whole.

A text longer than max_length x `CUT_CHARS_PER_TOKEN` characters is tokenized from its first characters
only (and whole again where the cut could change what the model reads: runtime/encoding.py). This
measures that step on the held-out BBC articles of `benchmarks/static.py topics` (1,777 characters
at the median) and on longer texts made of 4 and 16 consecutive articles, for the static student
(where the model costs least, so tokenizing matters most) and its teacher's default export:

- tokenizing only: `TextEncoder.tokenize` (cut) against the tokenizer on the whole texts;
- `Predictor.predict` of the same texts, cut and whole (the cut switched off for the call);
- whether both give the same token ids for every text, and how many texts were tokenized twice.

Calls take turns (timing.py's harness), medians of `--rounds`. Writes benchmarks/results/long_texts.json.

    python benchmarks/long_texts.py --static runs/static-topics/static-onnx --teacher runs/static-topics/teacher-onnx \
        --texts runs/static-topics/data/test.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bertdeploy import Predictor
from bertdeploy.data import load_texts
from bertdeploy.host import machine, usable_cpus
from bertdeploy.runtime import encoding
from bertdeploy.runtime.encoding import reads_before_cut
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "long_texts.json"
JOINED = (1, 4, 16)  # articles per text


def whole(call):
    """`call` with the cut switched off: every text tokenized whole."""
    def run(step: int) -> object:
        kept, encoding.CUT_CHARS_PER_TOKEN = encoding.CUT_CHARS_PER_TOKEN, 10**12
        try:
            return call(step)
        finally:
            encoding.CUT_CHARS_PER_TOKEN = kept
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", type=Path, required=True, help="the static student's export")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's export")
    parser.add_argument("--texts", type=Path, required=True, help="a CSV with a text column")
    parser.add_argument("--count", type=int, default=256, help="texts per call")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    articles, _ = load_texts(args.texts, "text", None)
    models = {"static fp32": Predictor.load(args.static, variant="fp32"),
              "teacher default": Predictor.load(args.teacher)}
    results = {"machine": machine("cpu"), "threads": usable_cpus(), "count": args.count, "rounds": args.rounds,
               "texts": str(args.texts), "chars_per_token": encoding.CUT_CHARS_PER_TOKEN, "sets": {}}
    for joined in JOINED:
        texts = [" ".join(articles[(i * joined + k) % len(articles)] for k in range(joined)) for i in range(args.count)]
        encoder = models["static fp32"].encoder
        limit = encoder.max_length * encoding.CUT_CHARS_PER_TOKEN
        cut_ids = [e.ids for e in encoder.tokenize(texts)]
        whole_ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
        retokenized = sum(len(t) > limit and not reads_before_cut(e, t[:limit])
                          for t, e in zip(texts, encoder.tokenizer.encode_batch([t[:limit] for t in texts]),
                                          strict=True))
        calls = {"tokenize cut": lambda step, texts=texts, encoder=encoder: encoder.tokenize(texts),
                 "tokenize whole": lambda step, texts=texts, encoder=encoder: encoder.tokenizer.encode_batch(texts)}
        for name, model in models.items():
            calls[f"{name}, cut"] = lambda step, model=model, texts=texts: model.predict(texts)
            calls[f"{name}, whole"] = whole(lambda step, model=model, texts=texts: model.predict(texts))
        ms = interleave(calls, args.rounds, warmup=1)
        entry = {"median_chars": float(np.median([len(t) for t in texts])),
                 "over_limit": sum(len(t) > limit for t in texts), "tokenized_twice": int(retokenized),
                 "same_ids": all(a == b for a, b in zip(cut_ids, whole_ids, strict=True)),
                 "ms": {name: float(np.median(values)) for name, values in ms.items()}}
        results["sets"][f"{joined} article{'s' if joined > 1 else ''}"] = entry
        print(f"{joined:>2} per text, {entry['median_chars']:>8.0f} chars: tokenize {entry['ms']['tokenize cut']:.1f} "
              f"ms cut vs {entry['ms']['tokenize whole']:.1f} ms whole; "
              + "; ".join(f"{n} {entry['ms'][n + ', cut']:.1f} vs {entry['ms'][n + ', whole']:.1f} ms" for n in models)
              + f"; same ids: {entry['same_ids']}, tokenized twice: {retokenized}", flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
