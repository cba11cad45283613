"""The tables the commands print: one function per command, from the result its library function returns.

`bertdeploy` prints these, or `to_json` with --json; they format figures and compute none. Standard library
only at the top: the CLI imports this module as it starts, so the few library names a table needs (metric
names, the auto routes in words) are imported where they are used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertdeploy.benchmark.report import BenchResult, Timing
    from bertdeploy.builder.distill import DistillResult
    from bertdeploy.builder.export import ExportResult
    from bertdeploy.builder.guard import Variant
    from bertdeploy.builder.train import FinetuneResult
    from bertdeploy.manifest import AutoSection
    from bertdeploy.predict.rows import PredictFileResult


def to_json(value: object) -> str:
    """A result dataclass as indented JSON (paths and other objects as strings), for --json."""
    return json.dumps(dataclasses.asdict(value), indent=2, ensure_ascii=False, default=str)


def figures_line(figures: dict) -> str:
    """'accuracy 0.9500, macro-F1 0.9499' (or micro-F1, macro-F1, subset accuracy)."""
    from bertdeploy.labels import METRIC_NAMES

    return ", ".join(f"{METRIC_NAMES[k]} {v:.4f}" for k, v in figures.items())


def per_class_table(per_class: dict, title: str = "class") -> list[str]:
    """Precision, recall, F1 and support of each class (or label), one line each."""
    width = max(len(title), *(len(label) for label in per_class))
    lines = [f"{title:<{width}}  precision  recall      f1  support"]
    for label, figures in per_class.items():
        lines.append(f"{label:<{width}}  {figures['precision']:>9.4f}  {figures['recall']:>6.4f}  "
                     f"{figures['f1']:>6.4f}  {figures['support']:>7}")
    return lines


def auto_routes(auto: AutoSection) -> str:
    """The manifest's auto ranges in words."""
    from bertdeploy.runtime.routing import describe_routes

    return describe_routes([(r.max_tokens, f"{r.variant} ({r.backend})") for r in auto.routes])


def finetune(result: FinetuneResult) -> str:
    """Losses and figures per epoch, the best one marked; figures per class; what was saved."""
    from bertdeploy.labels import METRIC_NAMES

    widths = {k: max(8, len(METRIC_NAMES[k])) for k in result.figures}
    lines = [f"{'epoch':>6}  {'train loss':>10}  {'eval loss':>9}  "
             + "  ".join(f"{METRIC_NAMES[k]:>{w}}" for k, w in widths.items())]
    for row in result.epochs:
        mark = "  <- best" if row["epoch"] == result.best_epoch else ""
        train_loss = f"{row['train_loss']:.4f}" if row["train_loss"] is not None else "-"
        lines.append(f"{row['epoch']:>6g}  {train_loss:>10}  {row['eval_loss']:>9.4f}  "
                     + "  ".join(f"{row[k]:>{w}.4f}" for k, w in widths.items()) + mark)
    lines += ["", *per_class_table(result.per_class, "label" if result.multi_label else "class")]
    vocabulary = result.vocabulary
    unknown = f", {vocabulary['unknown_share']:.1%} of their tokens {vocabulary['unknown_token']}" \
        if vocabulary["unknown_tokens"] else ""
    lines += ["", f"{result.train_samples} training texts{unknown}, {result.eval_samples} held out, "
                  f"{result.train_samples_per_second:.1f} samples/s"]
    if result.multi_label:
        thresholds = ", ".join(f"{label} {t:.3f}" for label, t in result.thresholds.items())
        if result.thresholds_tuned:
            lines.append(f"thresholds tuned on the {result.eval_samples} held-out texts: {thresholds}; the figures "
                         "on those texts are optimistic (at 0.5: " + figures_line(result.figures_at_default) + ")")
        else:
            lines.append(f"thresholds: {thresholds}")
    lines.append(f"saved {result.output_dir} ({figures_line(result.figures)}, epoch {result.best_epoch:g})")
    return "\n".join(lines)


def distill(result: DistillResult) -> str:
    """Teacher and student side by side: layers, parameters, accuracy (micro-F1 for multi-label), macro-F1,
    agreement, PyTorch latency."""
    from bertdeploy.labels import METRIC_NAMES

    metric = result.metric
    lines = [f"{'model':<8} {'layers':>6} {'parameters':>11} {METRIC_NAMES[metric]:>9} {'macro-F1':>9} "
             f"{'agreement':>10} {'batch 1':>9} {'batch 8':>9}"]
    for name in ("teacher", "student"):
        figures, latency = result.figures[name], result.latency_ms[name]
        agreement = f"{figures['agreement']:>10.2%}" if "agreement" in figures else f"{'-':>10}"
        lines.append(f"{name:<8} {result.depth[name]:>6} {result.parameters[name] / 1e6:>10.1f}M "
                     f"{figures[metric]:>9.4f} {figures['macro_f1']:>9.4f} {agreement} "
                     f"{latency['batch_1']:>7.1f}ms {latency['batch_8']:>7.1f}ms")
    speed, student = result.speedups(), result.student
    if result.static:
        kept = (f"static: {result.static['tokens']:,} token vectors of {result.static['dims']} dimensions from "
                f"{result.static['tool']}, no transformer")
    else:
        kept = f"the teacher's layers {', '.join(map(str, result.layers))}" if result.layers else "its own layers"
    lines += ["", f"student ({kept}): {figures_line(student.figures)}, "
                  f"{0.0 - result.figures['student'][result.drop_key]:+.2f} points against the teacher (epoch "
                  f"{student.best_epoch:g})",
              f"speed-up over the teacher (PyTorch fp32, the same texts, interleaved): {speed['batch_1']:.2f}x at "
              f"batch 1, {speed['batch_8']:.2f}x at batch 8",
              f"{student.train_samples} labelled and {result.unlabeled_texts} unlabelled training texts, "
              f"{student.eval_samples} held out",
              f"saved {student.output_dir}: export it as any fine-tuned model"]
    return "\n".join(lines)


def export(result: ExportResult) -> str:
    """One row per variant: size, parity with PyTorch, accuracy, speed; refused ones with the reason."""
    from bertdeploy.labels import METRIC_NAMES

    fp32_size = next(v.size_bytes for v in result.variants if v.name == "fp32")
    batches = ("batch_1", "batch_8", "batch_32")
    metric, drop = result.metric, f"{result.metric}_drop"
    difference = "max|dscore|" if result.multi_label else "max|dlogit|"
    lines = [f"{'variant':<12} {'runtime':<15} {'size':>9} {'of fp32':>7} {difference:>11} {'agree':>7} "
             f"{METRIC_NAMES[metric]:>8} {'drop':>6} {'float':>6} " + " ".join(f"{b.replace('_', ''):>8}"
                                                                            for b in batches)]
    for name, f in result.pytorch.items():
        accuracy = accuracy_cells(f[metric], f[drop])
        mark = "" if f["kept_accuracy"] else "  lost accuracy: not a baseline"
        lines.append(f"{name:<12} {'pytorch':<15} {'':>9} {'':>7} {'':>11} {f['agreement']:>7.2%} {accuracy} {'-':>6} "
                     f"{latency_cells(f.get('latency_ms'), batches)}{mark}")
    for v in result.variants:
        accuracy = accuracy_cells(*(v.eval[metric], v.eval[drop]) if v.eval else (None, None))
        speed = latency_cells(v.latency_ms, batches)
        runtime = f"openvino {v.precision}" if v.precision else v.backend
        kept = kept_float(v.quantization)
        mark = "  <- default" if v.name == result.default_variant else "" if v.shipped else "  REFUSED"
        lines.append(f"{v.name:<12} {runtime:<15} {v.size_bytes / 1e6:>7.1f}MB {v.size_bytes / fp32_size:>7.0%} "
                     f"{parity_cells(v)} {accuracy} {kept:>6} "
                     f"{speed}{mark}")
    lines.append("")
    if vocabulary := result.vocabulary:
        trimmed = vocabulary["pytorch"]
        lost = trimmed.get(drop)
        lines.append(f"vocabulary trimmed to {vocabulary['kept']:,} of {vocabulary['original']:,} tokens (those of "
                     f"{vocabulary['texts']:,} texts and every single character): PyTorch with it agrees on "
                     f"{trimmed['agreement']:.2%} of the texts"
                     + (f", {lost:.2f} points lost" if lost is not None else "") + "; every variant is built from it")
    for v in result.variants:
        if not v.shipped:
            lines.append(f"refused {v.name}: {v.reason}")
        elif v.quantization and v.quantization.get("float_nodes"):
            lines.append(f"{v.name}: kept the {kept_float(v.quantization)} weight nodes most sensitive to "
                         "quantization in float to hold the bound (named in the manifest)")
        others = {a["precision"] for a in v.attempts if a.get("precision") not in (None, v.precision)}
        if v.shipped and v.precision and others:
            lines.append(f"{v.name}: runs at {v.precision} inference precision (at {' and '.join(sorted(others))} "
                         "it missed the bound; the manifest's attempts)")
    for v in result.variants:
        if v.fused and any(v.fused.values()):
            counts = ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in v.fused.items() if n)
            lines.append(f"{v.name}: fused {counts}")
    speedups = result.speedups()
    if speedups:
        cells = [f"batch {batch.split('_')[1]} {name} {ratio:.1f}x {base}"
                 for batch, (name, ratio, base) in speedups.items()]
        lines.append("fastest against the fastest PyTorch that kept accuracy: " + "; ".join(cells))
    if result.guard != "agreement":
        lines.append(f"scored on {result.texts} labelled texts from {result.eval_source}"
                     + (f"; the guard goes by {METRIC_NAMES[metric]}" if result.multi_label else ""))
    else:
        lines.append(f"no labelled eval data: judged by agreement with PyTorch on {result.texts} texts "
                     f"from {result.eval_source}")
    if result.auto:
        lines.append(f"auto: {auto_routes(result.auto)} (bench measures it again on the serving machine)")
    lines.append(f"saved {result.output_dir} (default variant: {result.default_variant})")
    return "\n".join(lines)


def parity_cells(variant: Variant) -> str:
    """max|dlogit| and agreement, or dashes for a variant that could not run."""
    if not variant.ran:
        return f"{'-':>11} {'-':>7}"
    return f"{variant.parity['max_abs_diff']:>11.2g} {variant.parity['label_agreement']:>7.2%}"


def accuracy_cells(accuracy: float | None, drop: float | None) -> str:
    return f"{accuracy:>8.4f} {drop:>+6.2f}" if accuracy is not None else f"{'-':>8} {'-':>6}"


def latency_cells(latency_ms: dict | None, batches: tuple[str, ...]) -> str:
    return " ".join(f"{latency_ms[b]:>6.1f}ms" if latency_ms and b in latency_ms else f"{'-':>8}" for b in batches)


def kept_float(quantization: dict | None) -> str:
    """Weight nodes a quantized variant kept in float, of those ranked: "6/36"; "-" for float variants."""
    if not quantization:
        return "-"
    kept = len(quantization.get("float_nodes", []))
    return f"{kept}/{quantization['float_candidates']}" if "float_candidates" in quantization else str(kept)


def predict(result: PredictFileResult) -> str:
    """The summary line, and the scores when the input had labels."""
    lines = []
    if result.report is not None:
        report = result.report
        from bertdeploy.labels import figure_names

        multi_label = "micro_f1" in report
        figures = figure_names(multi_label)
        lines += per_class_table(report["per_class"], "label" if multi_label else "class")
        lines += [f"{figures_line({k: report[k] for k in figures})} over {result.scored} "
                  f"rows labelled in {result.label_column!r}"]
        if result.unknown_labels:
            unknown = ", ".join(f"{label!r} x{n}" for label, n in result.unknown_labels.items())
            lines.append(f"not scored: {unknown} (labels the model does not have)")
        if result.unlabelled:
            lines.append(f"not scored: {result.unlabelled} rows with{'out a' if multi_label else ' an empty'} label")
    lines.append(f"predicted {result.rows} text{'' if result.rows == 1 else 's'} with {result.variant} "
                 f"in {result.seconds:.1f}s "
                 f"({result.texts_per_second:.0f} texts/s) -> {result.output}")
    return "\n".join(lines)


def bench(result: BenchResult) -> str:
    """Latency and throughput per input kind and batch size; then size, load time, memory and accuracy."""
    m, engines = result.machine, result.engines
    flags = f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in ("onnxruntime", "onnxruntime-gpu",
                                                                                "torch", "openvino"))
    width = max(len(e.name) for e in result.engines)
    columns = [(f"{stat} ms", f"{stat}_ms", ".2f", True) for stat in ("mean", "p50", "p90", "p95", "p99")]
    columns += [("seq/s", "sequences_per_s", ".1f", False), ("tok/s", "tokens_per_s", ",.0f", False),
                ("speed-up", "speedup", ".2f", False)]  # (heading, field, format, lower is better)
    lines = [f"{result.device} {m.get('gpu', m['cpu'])}{flags}, {result.threads} threads; {versions}",
             f"{result.runs} timed calls per cell after {result.warmup} warm-up, engines taking turns; "
             f"* = best in its group; speed-up = {baselines(result.timings)}'s p50 / p50", "",
             f"{'inputs':<12} {'batch':>5}  {'engine':<{width}} " + " ".join(f"{c[0]:>10}" for c in columns)]
    groups = list(dict.fromkeys((t.inputs, t.batch_size) for t in result.timings))
    for inputs, batch in groups:
        rows = [t for t in result.timings if (t.inputs, t.batch_size) == (inputs, batch)]
        cells = [marked([getattr(t, attr) for t in rows], spec, 9, lower) for _, attr, spec, lower in columns]
        for i, t in enumerate(rows):
            head = f"{inputs:<12} {batch:>5}" if i == 0 else " " * 18
            lines.append(f"{head}  {t.engine:<{width}} " + " ".join(c[i] for c in cells))
    metric = "micro-F1" if result.multi_label else "accuracy"
    lines += ["", f"{'engine':<{width}}  {'runtime':<11} {'kind':<11} {'size MB':>9} {'load s':>9} {'peak RSS MB':>12} "
                  f"{metric:>9} {'macro-F1':>9} {'agreement':>10}"]
    others = [None, *(e.agreement for e in engines[1:])]  # the first engine is the reference
    cells = [marked([e.size_bytes / 1e6 for e in engines], ".1f", 8, True),
             marked([e.load_s for e in engines], ".2f", 8, True),
             marked([e.peak_rss_mb for e in engines], ".0f", 11, True),
             marked([e.headline for e in engines], ".4f", 8, False),
             marked([e.macro_f1 for e in engines], ".4f", 8, False),
             marked(others, ".4f", 9, False)]
    for i, e in enumerate(engines):
        agreement = cells[5][i] if i else f"{'(reference)':>10}"
        lines.append(f"{e.name:<{width}}  {e.backend:<11} {e.kind:<11} " + " ".join(c[i] for c in cells[:5]) + " "
                     + agreement)
    if result.eval_file:
        lines.append(f"\n{metric} and natural lengths: {result.eval_texts} texts from {result.eval_file}; "
                     "load s and peak RSS: a fresh process per engine")
    for directory in result.compared:
        label = next(e.name for e in engines if e.artifact == directory).rpartition(":")[0]
        lines.append(f"{label}: {directory} (its engines: the same texts through its own tokenizer)")
    if result.auto:
        from bertdeploy.artifacts import MANIFEST_NAME

        lines.append(f"recorded for --backend auto in {Path(result.artifact_dir) / MANIFEST_NAME}: "
                     f"{auto_routes(result.auto)}")
    return "\n".join(lines)


def marked(values: list[float | None], spec: str, width: int, lower: bool) -> list[str]:
    """Each value formatted to `width`, the best one followed by '*'."""
    present = [v for v in values if v is not None]
    best = (min if lower else max)(present) if present else None
    return [f"{'-' if v is None else format(v, spec)}{'*' if v is not None and v == best else ' '}".rjust(width + 1)
            for v in values]


def baselines(timings: list[Timing]) -> str:
    """The speed-up baseline in words: the fastest PyTorch engine that kept accuracy, in each cell."""
    names = list(dict.fromkeys(t.baseline for t in timings))
    if len(names) == 1:
        return f"{names[0]} (the fastest PyTorch that kept accuracy)"
    return "the cell's fastest PyTorch that kept accuracy (" + ", ".join(names) + ": speed-up 1.00)"


def optimize(result) -> str:
    """The choice per cell, the candidates rejected, the export kept, and where the report is."""
    from bertdeploy.optimizer.report import summary_lines

    report = result.report
    lines = summary_lines(report)
    lines += [f"rejected {r['candidate']} ({r['stage']}): {r['reason']}" for r in report["rejected"]]
    lines.append(f"kept {report['export']['candidate']} in {report['export']['path']}; report: "
                 f"{result.output_dir / 'report.html'}")
    return "\n".join(lines)
