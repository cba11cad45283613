"""Turn a fine-tuned model directory into a deployable ONNX artifact directory.

Steps: export with PyTorch's exporter (onnxexport.py: dynamic batch and sequence axes), build the variants asked for
(graph optimization, INT8 dynamic/static, FP16), run PyTorch and every variant on the same real
texts, fail loudly if the fp32 export disagrees with PyTorch, score each variant against the
labels, keep the nodes most sensitive to quantization in float until a variant holds the
accuracy bound, refuse those that cannot, time the survivors and name the fastest the default.
The directory holds the ONNX files, `tokenizer.json` and `manifest.json`; it appears only when
complete.
The predictor, bench and server read it; this module does not serve or benchmark at length, and
it leaves reading the model directory and choosing the texts to score and calibrate on to source.py.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import check_output_dir, sha256_file, staging_dir
from bertdeploy.builder import quantize as q
from bertdeploy.builder.examples import Examples
from bertdeploy.builder.guard import Judge, Variant, build_to_the_bound, judge_at_precisions, time_and_pick
from bertdeploy.builder.kinds import FP32_OV, KINDS, Build, Kind, built_unasked, file_name, import_extras, quantized
from bertdeploy.builder.onnxexport import OPSET, export_onnx
from bertdeploy.builder.optimize import LEVELS, check_level, fused_operators, optimize_graph, unfused_attention
from bertdeploy.builder.pretrained import check_safetensors, load_classifier
from bertdeploy.builder.reference import PYTORCH, PYTORCH_BF16, TorchModel, computes_bf16, pytorch_logits
from bertdeploy.builder.source import ModelSource, calibration_texts, read_model_dir, scoring_texts, trimming_texts
from bertdeploy.builder.vocabulary import trim
from bertdeploy.defaults import (
    AUTO,
    CALIBRATION_METHOD,
    CALIBRATION_SAMPLES,
    DEVICE,
    EVAL_SAMPLES,
    EXPORTER,
    EXPORTERS,
    MAX_ACCURACY_DROP,
    NO_QUANTIZATION,
    PER_CHANNEL,
)
from bertdeploy.errors import BertdeployError, DataError, ModelError, check_options, require_training
from bertdeploy.host import usable_cpus
from bertdeploy.manifest import AutoSection, Evaluation, Exporter, ExportManifest
from bertdeploy.runtime.backends import OPENVINO
from bertdeploy.runtime.encoding import encode, load_encoder
from bertdeploy.runtime.sessions import check_device, create_session, resolve_providers

logger = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    """What to build from `model_dir`; accuracy drops are in percentage points."""

    model_dir: str | Path
    output_dir: str | Path
    _: KW_ONLY
    optimize: str | None = None
    # None: what is worth shipping here: int8 (the portable default), and int8-ov where NNCF is installed
    # (fp16 on CUDA); ["none"] or []: fp32 only
    quantize: list[str] | None = None
    # also ship the fp32 graph on the OpenVINO runtime (variant fp32-ov); None: where OpenVINO is installed,
    # unless `quantize` names the variants
    openvino: bool | None = None
    quant_preset: str = AUTO
    per_channel: bool = PER_CHANNEL
    calibration_file: str | Path | None = None
    calibration_samples: int = CALIBRATION_SAMPLES
    calibration_method: str = CALIBRATION_METHOD
    eval_file: str | Path | None = None
    eval_samples: int = EVAL_SAMPLES  # a stratified sample of larger eval sets; 0 scores every row
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    opset: int | None = None
    exporter: str = EXPORTER  # PyTorch's TorchScript exporter, or torch.export's ("dynamo"): onnxexport.py
    device: str = DEVICE
    allow_pickle: bool = False  # export a model whose weights are pickled only (pytorch_model.bin)
    overwrite: bool = False
    # keep only the vocabulary of the training texts (or of `trim_texts`) and single characters
    trim_vocabulary: bool = False
    trim_texts: list[str | Path] = field(default_factory=list)
    progress: bool = False
    defaulted: bool = field(init=False, default=False)  # the variants were chosen here, not named

    def __post_init__(self) -> None:
        named = self.quantize is not None
        self.defaulted = not named
        if not named:
            self.quantize = [name for name in quantized() if built_unasked(KINDS[name], self.device)]
        self.quantize = [x for x in dict.fromkeys(self.quantize) if x != NO_QUANTIZATION]
        if self.openvino is None:
            self.openvino = not named and built_unasked(KINDS[FP32_OV], self.device)
        unknown = [x for x in self.quantize if x not in quantized()]
        if unknown:
            raise BertdeployError(f"unknown quantization {unknown[0]!r}; use one of {', '.join(quantized())}")
        check_device(self.device)
        if self.optimize is not None:
            check_level(self.optimize, self.device)
        if any(kind.backend == OPENVINO for kind in self.kinds()) and self.device != "cpu":
            named_by = ["--openvino", *(name for name in quantized() if KINDS[name].backend == OPENVINO)]
            raise BertdeployError(f"OpenVINO variants ({', '.join(named_by)}) are built and checked on the CPU; "
                                  "export them with --device cpu")
        self.quant_preset = q.resolve_preset(self.quant_preset)
        if self.calibration_method not in q.CALIBRATION_METHODS:
            raise BertdeployError(f"unknown calibration method {self.calibration_method!r}; "
                                  f"use one of {', '.join(q.CALIBRATION_METHODS)}")
        check_options([
            (self.calibration_samples > 0, "calibration_samples must be positive"),
            (self.eval_samples >= 0, "eval_samples must be 0 (all rows) or positive"),
            (0 <= self.max_accuracy_drop <= 100, "max_accuracy_drop is in points, between 0 and 100"),
            (self.opset is None or 14 <= self.opset <= 23, "opset must be between 14 and 23"),
            (self.exporter in EXPORTERS, f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}"),
            (self.trim_vocabulary or not self.trim_texts, "--trim-texts names the texts for --trim-vocabulary; "
                                                          "add --trim-vocabulary"),
        ])
        self.trim_texts = list(self.trim_texts)

    def kinds(self) -> list[Kind]:
        """The variants to build beside fp32, in the order they are judged: fp32-ov (--openvino), --quantize's."""
        return ([KINDS[FP32_OV]] if self.openvino else []) + [KINDS[name] for name in self.quantize]


@dataclass(kw_only=True)
class ExportResult:
    output_dir: Path
    default_variant: str
    reference: dict  # PyTorch's figures: accuracy, macro_f1 (micro_f1, macro_f1, subset_accuracy); None without labels
    guard: str  # the metric with labelled data (accuracy; micro_f1 for multi-label models), else "agreement"
    eval_source: str | None
    texts: int
    variants: list[Variant]
    auto: AutoSection | None = None  # the manifest's auto section: timings per batch size, and the ranges they give
    # PyTorch fp32 and, where the device computes bf16, under bf16 autocast: figures, kept_accuracy, latency_ms
    pytorch: dict = field(default_factory=dict)
    metric: str = "accuracy"  # what the guard compares with labels: accuracy, or micro_f1 for multi-label models
    multi_label: bool = False
    vocabulary: dict | None = None  # a trimmed vocabulary: tokens kept, of how many, from which texts, its figures

    def speedups(self) -> dict[str, tuple[str, float, str]]:
        """Per batch: the fastest shipped variant, its speed-up and the fastest PyTorch that kept accuracy."""
        kept = {name: f["latency_ms"] for name, f in self.pytorch.items() if f["kept_accuracy"]}
        shipped = [v for v in self.variants if v.shipped and v.latency_ms]
        out = {}
        for batch in (shipped[0].latency_ms if shipped and kept else {}):
            base = min(kept, key=lambda name: kept[name][batch])
            best = min(shipped, key=lambda v: v.latency_ms[batch])
            out[batch] = (best.name, kept[base][batch] / best.latency_ms[batch], base)
        return out


def export(options: ExportOptions) -> ExportResult:
    """Export, build, check and score every variant; write the artifact directory."""
    require_training("export", "torch", "transformers", "onnx")
    check_output_dir(options.output_dir, options.overwrite)
    source = read_model_dir(options.model_dir)
    check_safetensors(source.path, options.allow_pickle)
    from bertdeploy.builder import staticmodel

    static = staticmodel.is_static(source.path)
    # how model.onnx is made, for the manifest: a static student's graph is written directly, not by PyTorch
    if static:
        graph_of, exporter = staticmodel.export_onnx, {"name": "static", "opset": staticmodel.OPSET}
    else:
        exporter = {"name": options.exporter, "opset": options.opset or OPSET}
        graph_of = functools.partial(export_onnx, exporter=options.exporter, opset=exporter["opset"],
                                     device=options.device, allow_pickle=options.allow_pickle)
    if options.optimize and static:
        raise BertdeployError(f"--optimize {options.optimize}: {source.path} is a static student, with no transformer "
                              "layers to fuse; export it without --optimize")
    resolve_providers([options.device])  # names what is installed when ONNX Runtime cannot run there
    kinds = options.kinds()
    import_extras(kinds)  # a missing extra is named before any work
    scored, eval_source = scoring_texts(source, options.eval_file, options.eval_samples)
    calibration = None
    calibrated = [name for name, kind in KINDS.items() if kind.calibrated and kind in kinds]
    if calibrated:
        try:
            calibration = calibration_texts(source, options.calibration_file, options.calibration_samples, calibrated)
        except DataError as e:
            if not options.defaulted:
                raise
            logger.warning("not building %s, which nobody named: %s", " and ".join(calibrated), e)  # the rest pays
            kinds = [kind for kind in kinds if not kind.calibrated]
    reference = reference_logits(source, scored, options.device, allow_pickle=options.allow_pickle)
    # One line of autocast makes PyTorch much faster on CPUs that compute bf16: the baseline a user would run there.
    bf16 = reference_logits(source, scored, options.device, autocast=True, allow_pickle=options.allow_pickle) \
        if computes_bf16(options.device) else None
    if not scored.labels:
        logger.warning("no labelled eval data (give --eval-file): variants are judged by agreement with PyTorch on "
                       "%d texts", len(scored))

    with staging_dir(options.output_dir) as out:
        work = out / ".work"
        exported, trimmed, vocabulary = source, None, None
        if options.trim_vocabulary:
            exported, trimmed, vocabulary = _trim(source, options, scored, work / "trimmed")
        work.mkdir(parents=True, exist_ok=True)
        graph_of(exported.path, work / "model.onnx")
        fp32 = out / file_name("fp32")
        shutil.copyfile(work / "model.onnx", fp32)
        tokenizer = write_tokenizer(exported, out / "tokenizer.json")
        judge = Judge(scored, source.scheme, reference, tokenizer, device=options.device,
                      max_accuracy_drop=options.max_accuracy_drop, exported=trimmed)
        if trimmed is not None:
            vocabulary["pytorch"] = _judge_trim(judge, trimmed, vocabulary)
        variants = [judge.check_fp32(fp32)]
        # nothing to build (fp32-ov): the same file on the other runtime, at the precision that holds the bound
        variants += [judge_at_precisions(judge, kind.name, fp32, "fp32", backend=kind.backend) for kind in kinds
                     if kind.build is None]
        level, optimized = options.optimize, None
        if level:
            optimized = optimize_graph(fp32, level, device=options.device, destination=out / file_name(level),
                                       model_dir=exported.path)
            variants.append(judge.score(level, optimized, "optimized", optimization=level))
        rankings: dict[Path, list[str]] = {}  # per graph: every variant built from it shares one ranking
        for kind in (kind for kind in kinds if kind.build is not None):
            graphs = [(kind.name, fp32, None)]
            if kind.fused_too and level and not LEVELS[level].fp16:
                graphs.append((f"{level}-{kind.name}", optimized, level))
            for name, graph, fused in graphs:
                build = Build(kind=kind.name, graph=graph, destination=out / file_name(name), fused=fused,
                              tokenizer=tokenizer, calibration=calibration, preset=options.quant_preset,
                              calibration_method=options.calibration_method, progress=options.progress)
                variants.append(build_to_the_bound(
                    name, kind.name, build.destination, judge, first_settings=kind.first_settings(options.per_channel),
                    rank=functools.partial(_ranking, rankings, graph, tokenizer, scored),
                    build=functools.partial(kind.build, build), optimization=fused, backend=kind.backend,
                ))
        shutil.rmtree(work)
        _report_fusions(variants, out, level)
        pytorch = {PYTORCH: judge.baseline(reference)}
        if bf16 is not None:
            pytorch[PYTORCH_BF16] = judge.baseline(bf16)
        runs = {name: TorchModel(str(source.path), "bf16" if name == PYTORCH_BF16 else "fp32", device=options.device,
                                 threads=usable_cpus(), allow_pickle=options.allow_pickle).run for name in pytorch}
        default, auto, latency = time_and_pick(variants, out, tokenizer, scored, device=options.device, baselines=runs)
        for name, figures in pytorch.items():
            figures["latency_ms"] = latency[name]
        inputs = [i.name for i in create_session(fp32, options.device).get_inputs()]
        _write_manifest(out, options, source, variants, default, inputs, judge.reference_figures, judge.guard,
                        eval_source, len(scored), auto, pytorch, vocabulary, exporter)
    return ExportResult(output_dir=Path(options.output_dir), default_variant=default,
                        reference=judge.reference_figures, guard=judge.guard, eval_source=eval_source,
                        texts=len(scored), variants=variants, auto=auto, pytorch=pytorch, metric=source.scheme.metric,
                        multi_label=source.scheme.multi_label, vocabulary=vocabulary)


def _report_fusions(variants: list[Variant], out: Path, level: str | None) -> None:
    """Record each shipped variant's fused operators (each file read once: fp32 and fp32-ov share one); warn
    when the optimization fused no attention."""
    shipped = [v for v in variants if v.shipped]
    fused = {file: fused_operators(q.graph_nodes(out / file)) for file in {v.file for v in shipped}}
    for v in shipped:
        v.fused = fused[v.file]
    optimized = next((v for v in variants if v.name == level and v.shipped), None)
    warning = unfused_attention(level, optimized.fused) if optimized else None
    if warning:
        logger.warning("%s", warning)


# -- PyTorch, the export and the tokenizer -----------------------------------------------------

def reference_logits(source: ModelSource, examples: Examples, device: str, batch_size: int = 32,
                     autocast: bool = False, allow_pickle: bool = False) -> np.ndarray:
    """PyTorch's logits for `examples` from the model directory: what every variant is judged against."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = load_classifier(source.path, allow_pickle).to(device).eval()
    logger.info("running PyTorch%s on %d texts", " with bf16 autocast" if autocast else "", len(examples))
    return pytorch_logits(model, tokenizer, examples.texts, examples.pairs, source.max_length, device=device,
                          batch_size=batch_size, autocast=autocast)


def _trim(source: ModelSource, options: ExportOptions, scored: Examples,
          destination: Path) -> tuple[ModelSource, np.ndarray, dict]:
    """The model with its vocabulary trimmed (vocabulary.trim) to the training texts or `trim_texts`: its source, its
    PyTorch logits on the scoring texts, and the manifest's `vocabulary` section."""
    texts, pairs, where = trimming_texts(source, options.trim_texts)
    result = trim(source.path, texts, pairs, destination, options.allow_pickle)
    logger.info("vocabulary trimmed to %d of %d tokens: the %d that the %d texts of %s use, the special tokens and "
                "every single character", result.kept, result.original, result.seen, result.texts, where)
    trimmed = replace(source, path=destination)
    return trimmed, reference_logits(trimmed, scored, options.device), {**result.fields(), "texts_from": where}


def _judge_trim(judge: Judge, logits: np.ndarray, vocabulary: dict) -> dict:
    """The trimmed PyTorch model against the untrimmed one, by the variants' rule; refused beyond the bound, since
    every variant is built from it."""
    figures = judge.baseline(logits)
    if not figures["kept_accuracy"]:
        lost = figures.get(judge.scheme.drop_key)
        what = (f"loses {lost:.2f} points of {judge.guard}" if lost is not None
                else f"agrees with the untrimmed model on {figures['agreement']:.1%} of the texts")
        raise BertdeployError(
            f"--trim-vocabulary: the model with {vocabulary['kept']} of {vocabulary['original']} tokens {what} on "
            f"{len(judge.examples)} held-out texts (at most {judge.max_drop} allowed); nothing was written. Give "
            "more of the texts it will meet with --trim-texts, or export without --trim-vocabulary")
    return figures


def write_tokenizer(source: ModelSource, destination: Path):
    """`tokenizer.json` that truncates at the max length and pads right, as the graphs expect."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    if hf.pad_token is None:
        raise ModelError(f"{source.path}: the tokenizer has no padding token")
    backend = hf.backend_tokenizer
    backend.enable_truncation(source.max_length)
    backend.enable_padding(direction="right", pad_id=hf.pad_token_id, pad_token=hf.pad_token,
                           pad_type_id=hf.pad_token_type_id)
    backend.save(str(destination))
    return load_encoder(destination, source.max_length)


def _ranking(rankings: dict[Path, list[str]], graph: Path, tokenizer, scored: Examples) -> list[str]:
    """`graph`'s weight nodes, most sensitive to quantization first, measured on a spread of scoring texts."""
    if graph not in rankings:
        names = [i.name for i in create_session(graph, "cpu").get_inputs()]
        picks = np.linspace(0, len(scored) - 1, num=min(q.RANKING_TEXTS, len(scored))).astype(int)
        feeds = (encode(tokenizer, [scored.texts[i]], None if scored.pairs is None else [scored.pairs[i]], names)
                 for i in picks)
        rankings[graph] = q.rank_sensitive_nodes(graph, feeds)
    return rankings[graph]


# -- the manifest ----------------------------------------------------------------------------

def _write_manifest(out: Path, options: ExportOptions, source: ModelSource, variants: list[Variant], default: str,
                    inputs: list[str], reference: dict, guard: str, eval_source: str | None, texts: int,
                    auto: AutoSection | None, pytorch: dict, vocabulary: dict | None, exporter: dict) -> None:
    ExportManifest(
        source_model=str(source.path.absolute()),
        source_checkpoint=None if source.manifest is None else source.manifest.source_model,
        **source.scheme.manifest_fields(),
        max_length=source.max_length,
        inputs=inputs,
        tokenizer="tokenizer.json",
        tokenizer_sha256=sha256_file(out / "tokenizer.json"),
        **source.columns.to_dict(),
        device=options.device,
        exporter=Exporter(**exporter),
        default_variant=default,
        evaluation=Evaluation(source=eval_source, texts=texts, guard=guard, metric=source.scheme.metric,
                              max_accuracy_drop=options.max_accuracy_drop,
                              reference={"framework": "pytorch", **reference}, pytorch=pytorch),
        variants={v.name: v.entry() for v in variants if v.shipped},
        rejected={v.name: v.entry() for v in variants if not v.shipped},
        auto=auto,
        vocabulary=vocabulary or None,
    ).write(out)
