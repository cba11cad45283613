"""Turn a fine-tuned model directory into a deployable ONNX artifact directory.

Steps: export through Optimum (dynamic batch and sequence axes), build the variants asked for
(graph optimization, INT8 dynamic/static, FP16), run PyTorch and every variant on the same real
texts, fail loudly if the fp32 export disagrees with PyTorch, score each variant against the
labels, keep the nodes most sensitive to quantization in float until a variant holds the
accuracy bound, refuse those that cannot, time the survivors and name the fastest the default.
The directory holds the ONNX files, `tokenizer.json` and `manifest.json`; it appears only when
complete.
The predictor, bench and server read it; this module does not serve or benchmark at length.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import (
    MANIFEST_NAME,
    check_output_dir,
    read_manifest,
    sha256_file,
    staging_dir,
    write_manifest,
)
from bertdeploy.build import quantize as q
from bertdeploy.build.guard import Judge, Variant, build_to_the_bound, time_and_pick
from bertdeploy.build.optimize import check_level, fused_operators, optimize_graph, unfused_attention
from bertdeploy.build.reference import PYTORCH, PYTORCH_BF16, TorchModel, computes_bf16, pytorch_logits
from bertdeploy.data import (
    Examples,
    check_known_labels,
    example_columns,
    load_examples,
    load_texts,
    sample_examples,
    split_examples,
)
from bertdeploy.errors import BertdeployError, DataError, ModelError, check_options, require_training
from bertdeploy.host import usable_cpus
from bertdeploy.labels import PROBLEM_TYPES, SINGLE_LABEL, LabelScheme
from bertdeploy.runtime.backends import ONNXRUNTIME, OPENVINO, import_openvino
from bertdeploy.runtime.encoding import encode, load_encoder
from bertdeploy.runtime.sessions import DEVICES, check_device, create_session

logger = logging.getLogger(__name__)

ARTIFACT_KIND = "onnx"
QUANTIZATIONS = ("int8", "int8-static", "fp16", "int8-ov")
CALIBRATED = ("int8-static", "int8-ov")
SAMPLE_SEED = 0
PARITY_TEXTS_WITHOUT_LABELS = 256
SAMPLE_TEXTS = [  # parity texts of last resort: short and long, Chinese and English
    "这个手机很好用，电池也耐用。", "质量太差了，用了两天就坏了，非常失望！", "物流很快", "一般般吧，价格还可以。",
    "The service was excellent and the staff were friendly.", "Terrible. Never again.", "ok",
    "I bought this for my daughter and she has used it every day since; the battery lasts, the screen is bright "
    "and it survived two drops, though the charger stopped working after a month.",
    "书的内容不错，但是印刷质量一般，有几页字迹模糊，希望卖家以后注意。总体来说还是值得一读的。", "不推荐",
    "Works as described.", "客服态度很差，问了三次都没人回复，退货流程也很麻烦，再也不会在这家买了。",
]


@dataclass
class ExportOptions:
    """What to build from `model_dir`; accuracy drops are in percentage points."""

    model_dir: str | Path
    output_dir: str | Path
    optimize: str | None = None
    # None: what is worth shipping here: int8 (the portable default), and int8-ov where NNCF is installed
    # (fp16 on CUDA); ["none"] or []: fp32 only
    quantize: list[str] | None = None
    # also ship the fp32 graph on the OpenVINO runtime (variant fp32-ov); None: where OpenVINO is installed,
    # unless `quantize` names the variants
    openvino: bool | None = None
    quant_preset: str = "auto"
    per_channel: bool = True
    calibration_file: str | Path | None = None
    calibration_samples: int = 300
    calibration_method: str = "minmax"
    eval_file: str | Path | None = None
    eval_samples: int = 2000  # a stratified sample of larger eval sets; 0 scores every row
    max_accuracy_drop: float = 1.0
    opset: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = False
    defaulted: bool = field(init=False, default=False)  # the variants were chosen here, not named

    def __post_init__(self) -> None:
        named = self.quantize is not None
        self.defaulted = not named
        if not named:
            openvino_int8 = _installed("nncf") and _installed("openvino")
            self.quantize = ["fp16"] if self.device == "cuda" else ["int8"] + (["int8-ov"] if openvino_int8 else [])
        self.quantize = [x for x in dict.fromkeys(self.quantize) if x != "none"]
        if self.openvino is None:
            self.openvino = not named and self.device == "cpu" and _installed("openvino")
        unknown = [x for x in self.quantize if x not in QUANTIZATIONS]
        if unknown:
            raise BertdeployError(f"unknown quantization {unknown[0]!r}; use one of {', '.join(QUANTIZATIONS)}")
        if self.device not in DEVICES:
            raise BertdeployError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.optimize is not None:
            check_level(self.optimize, self.device)
        if (self.openvino or "int8-ov" in self.quantize) and self.device != "cpu":
            raise BertdeployError("OpenVINO variants (--openvino, int8-ov) are built and checked on the CPU; "
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
        ])


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class ExportResult:
    output_dir: Path
    default_variant: str
    reference: dict  # PyTorch's figures: accuracy, macro_f1 (micro_f1, macro_f1, subset_accuracy); None without labels
    guard: str  # the metric with labelled data (accuracy; micro_f1 for multi-label models), else "agreement"
    eval_source: str | None
    texts: int
    variants: list[Variant]
    auto: dict | None = None  # the manifest's auto section: timings per batch size, and the ranges they give
    # PyTorch fp32 and, where the device computes bf16, under bf16 autocast: figures, kept_accuracy, latency_ms
    pytorch: dict = field(default_factory=dict)
    metric: str = "accuracy"  # what the guard compares with labels: accuracy, or micro_f1 for multi-label models
    multi_label: bool = False

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


@dataclass
class _Source:
    path: Path
    scheme: LabelScheme
    max_length: int
    columns: dict  # text_column, label_column, pair_column and the multi-label settings: load_examples' keywords
    manifest: dict | None

    @property
    def labels(self) -> list[str]:
        return list(self.scheme.labels)


def export(options: ExportOptions) -> ExportResult:
    """Export, build, check and score every variant; write the artifact directory."""
    require_training("export", "torch", "transformers", "optimum.exporters.onnx", "onnx")
    check_output_dir(options.output_dir, options.overwrite)
    source = read_model_dir(options.model_dir)
    check_device(options.device)
    kinds = list(options.quantize)  # the quantized variants to build
    if options.openvino or "int8-ov" in kinds:  # name a missing extra before any work
        import_openvino()
    if "int8-ov" in kinds:
        q.import_nncf()
    scored, eval_source = _scoring_texts(options, source)
    calibration = None
    if set(CALIBRATED) & set(kinds):
        try:
            calibration = _calibration_texts(options, source)
        except DataError as e:
            if not options.defaulted:
                raise
            logger.warning("not building int8-ov, which nobody named: %s", e)  # the rest still pays
            kinds = [kind for kind in kinds if kind not in CALIBRATED]
    reference = _pytorch_logits(source, scored, options.device)
    # One line of autocast makes PyTorch much faster on CPUs that compute bf16: the baseline a user would run there.
    bf16 = _pytorch_logits(source, scored, options.device, autocast=True) if computes_bf16(options.device) else None
    if not scored.labels:
        logger.warning("no labelled eval data (give --eval-file): variants are judged by agreement with PyTorch on "
                       "%d texts", len(scored))

    with staging_dir(options.output_dir) as out:
        work = out / ".work"
        _export_fp32(source.path, work, options)
        fp32 = out / _file_name("fp32")
        shutil.copyfile(work / "model.onnx", fp32)
        tokenizer = _write_tokenizer(source, out / "tokenizer.json")
        judge = Judge(scored, source.scheme, reference, tokenizer, options.device, options.max_accuracy_drop)
        variants = [judge.check_fp32(fp32)]
        if options.openvino:  # the same file on the other runtime: no second export
            variants.append(judge.score("fp32-ov", fp32, "fp32", backend=OPENVINO))
        level = options.optimize
        if level:
            optimized = optimize_graph(work, level, options.device, out / _file_name(level))
            variants.append(judge.score(level, optimized, "optimized", optimization=level))
        jobs = [(kind, kind, fp32, None) for kind in kinds]
        if "int8" in kinds and level in ("O1", "O2", "O3"):
            # Fusing first is faster at batch 1 and slower at larger batches (benchmarks/RESULTS.md):
            # build both orders and let the timing below pick.
            jobs.insert(kinds.index("int8") + 1, (f"{level}-int8", "int8", optimized, level))
        rankings: dict[Path, list[str]] = {}  # per graph: every variant built from it shares one ranking
        for name, kind, graph, fused in jobs:
            destination = out / _file_name(name)
            variants.append(build_to_the_bound(
                name, kind, destination, judge, options.per_channel,
                rank=functools.partial(_ranking, rankings, graph, tokenizer, scored),
                build=_builder(kind, graph, destination, options, tokenizer, calibration, fused),
                optimization=fused, backend=OPENVINO if kind == "int8-ov" else ONNXRUNTIME,
            ))
        shutil.rmtree(work)
        _report_fusions(variants, out, level)
        pytorch = {PYTORCH: judge.baseline(reference)}
        if bf16 is not None:
            pytorch[PYTORCH_BF16] = judge.baseline(bf16)
        runs = {name: TorchModel(str(source.path), "bf16" if name == PYTORCH_BF16 else "fp32", options.device,
                                 usable_cpus()).run for name in pytorch}
        default, auto, latency = time_and_pick(variants, out, tokenizer, scored, options.device, runs)
        for name, figures in pytorch.items():
            figures["latency_ms"] = latency[name]
        inputs = [i.name for i in create_session(fp32, options.device).get_inputs()]
        _write_manifest(out, options, source, variants, default, inputs, judge.reference_figures, judge.guard,
                        eval_source, len(scored), auto, pytorch)
    return ExportResult(Path(options.output_dir), default, judge.reference_figures, judge.guard, eval_source,
                        len(scored), variants, auto, pytorch, source.scheme.metric, source.scheme.multi_label)


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


# -- the model directory ---------------------------------------------------------------------

def read_model_dir(model_dir: str | Path) -> _Source:
    """Labels, max length and columns of a fine-tuned classifier directory, with a clear error if it is not one."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"{path}: no such directory")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json); give a directory written by "
                         "`bertdeploy finetune` or save_pretrained")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: no tokenizer.json; deployment needs the fast tokenizer saved beside the model "
                         "(tokenizer.save_pretrained(dir) with a fast tokenizer)")
    manifest = read_manifest(path, "model") if (path / MANIFEST_NAME).is_file() else None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"{path}: not a text classifier (architectures: {', '.join(architectures) or 'none'}), so "
                         "it has no labels; fine-tune it first with `bertdeploy finetune`")
    id2label = config.get("id2label") or {}
    labels = [id2label.get(str(i)) for i in range(len(id2label))]
    if not labels or None in labels:
        raise ModelError(f"{path / 'config.json'}: no labels (id2label is missing or incomplete)")
    if manifest is not None and manifest.get("labels") != labels:
        raise ModelError(f"{path}: the labels in manifest.json and config.json differ; re-run the fine-tuning")
    if manifest is None and all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        logger.warning("%s: the labels are generic names (%s); predictions will use them", path, ", ".join(labels))
    problem_type = config.get("problem_type") or SINGLE_LABEL
    if problem_type not in PROBLEM_TYPES:
        raise ModelError(f"{path}: problem type {problem_type!r}; bertdeploy exports classifiers "
                         f"({', '.join(PROBLEM_TYPES)})")
    scheme = LabelScheme.from_manifest({**(manifest or {}), "labels": labels, "problem_type": problem_type})
    return _Source(path, scheme, _max_length(path, config, manifest), _columns(manifest, scheme), manifest)


def _max_length(path: Path, config: dict, manifest: dict | None) -> int:
    positions = config.get("max_position_embeddings") or 512
    if manifest is not None:
        return min(int(manifest["max_length"]), positions)
    try:
        saved = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, json.JSONDecodeError):
        saved = None
    return min(int(saved), positions) if isinstance(saved, int | float) and saved < 1e6 else min(512, positions)


def _columns(manifest: dict | None, scheme: LabelScheme) -> dict:
    return example_columns({**(manifest or {}), **scheme.manifest_fields()})


# -- texts -------------------------------------------------------------------------------------

def _scoring_texts(options: ExportOptions, source: _Source) -> tuple[Examples, str]:
    """The texts every variant runs on: labelled eval data when there is some, else unlabelled texts."""
    examples, where = _eval_examples(options, source)
    if examples is not None:
        if options.eval_samples and len(examples) > options.eval_samples:
            logger.info("scoring on a stratified sample of %d of the %d eval rows (--eval-samples)",
                        options.eval_samples, len(examples))
            examples = sample_examples(examples, options.eval_samples, SAMPLE_SEED)
        return examples, where
    texts, pairs, where = _unlabelled_texts(source)
    texts, pairs = _sample_texts(texts, pairs, PARITY_TEXTS_WITHOUT_LABELS)
    return Examples(Path(where), texts, [], pairs), where


def _sample_texts(texts: list[str], pairs: list[str] | None, n: int) -> tuple[list[str], list[str] | None]:
    """A seeded sample of `n` texts (all of them if fewer), in file order."""
    if len(texts) <= n:
        return texts, pairs
    keep = sorted(np.random.default_rng(SAMPLE_SEED).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep], None if pairs is None else [pairs[i] for i in keep]


def _eval_examples(options: ExportOptions, source: _Source) -> tuple[Examples | None, str | None]:
    columns = source.columns
    if options.eval_file is not None:
        examples = load_examples(options.eval_file, **columns)
        check_known_labels(examples, source.labels)
        return examples, str(options.eval_file)
    data = (source.manifest or {}).get("data", {})
    drop_empty = (source.manifest or {}).get("training", {}).get("drop_empty", False)
    named = data.get("eval_file") or (data.get("train_file") if "val_split" in data else None)
    if named is None:
        return None, None
    path = Path(named["path"])
    if not path.is_file():
        logger.warning("%s, named in the model's manifest, is gone; pass --eval-file to score the variants", path)
        return None, None
    if sha256_file(path) != named["sha256"]:
        logger.warning("%s changed since training; scoring on it as it is now", path)
    examples = load_examples(path, **columns, drop_empty=drop_empty)
    check_known_labels(examples, source.labels)
    if "val_split" in data:
        split = data["val_split"]
        _, examples = split_examples(examples, split["fraction"], split["seed"])
        return examples, f"{path} (the validation split held out in training)"
    return examples, f"{path} (the training run's eval file)"


def _unlabelled_texts(source: _Source) -> tuple[list[str], list[str] | None, str]:
    train = (source.manifest or {}).get("data", {}).get("train_file")
    if train and Path(train["path"]).is_file():
        texts, pairs = load_texts(train["path"], source.columns["text_column"], source.columns["pair_column"])
        return texts, pairs, train["path"]
    pairs = list(reversed(SAMPLE_TEXTS)) if source.columns["pair_column"] else None
    return list(SAMPLE_TEXTS), pairs, "built-in sample texts"


def _calibration_texts(options: ExportOptions, source: _Source) -> tuple[list[str], list[str] | None]:
    if options.calibration_file is not None:
        path = Path(options.calibration_file)
    else:
        train = (source.manifest or {}).get("data", {}).get("train_file")
        if not train or not Path(train["path"]).is_file():
            raise DataError(f"{' and '.join(k for k in CALIBRATED if k in options.quantize)} needs calibration "
                            "texts and the model's training file is not at hand: pass --calibration-file with a "
                            "few hundred typical texts")
        path = Path(train["path"])
    texts, pairs = load_texts(path, source.columns["text_column"], source.columns["pair_column"])
    texts, pairs = _sample_texts(texts, pairs, options.calibration_samples)
    logger.info("calibrating on %d texts from %s", len(texts), path)
    return texts, pairs


# -- PyTorch, the export and the tokenizer -----------------------------------------------------

def _pytorch_logits(source: _Source, examples: Examples, device: str, batch_size: int = 32,
                    autocast: bool = False) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForSequenceClassification.from_pretrained(source.path).to(device).eval()
    logger.info("running PyTorch%s on %d texts", " with bf16 autocast" if autocast else "", len(examples))
    return pytorch_logits(model, tokenizer, examples.texts, examples.pairs, source.max_length, device, batch_size,
                          autocast)


def _export_fp32(model_dir: Path, work: Path, options: ExportOptions) -> None:
    from optimum.exporters.onnx import main_export

    logger.info("exporting %s to ONNX", model_dir)
    transformers_logger = logging.getLogger("transformers")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)  # tracing advice meant for model authors, not for users
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Optimum's own validation only warns; our parity check fails loudly instead.
            main_export(str(model_dir), work, task="text-classification", opset=options.opset,
                        device=options.device, do_validation=False)
    finally:
        transformers_logger.setLevel(level)
    if (work / "model.onnx_data").exists():
        raise ModelError(f"{model_dir}: the model is over 2 GB and needs ONNX external data, which bertdeploy "
                         "does not package yet")


def _write_tokenizer(source: _Source, destination: Path):
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


def _file_name(variant: str) -> str:
    return "model.onnx" if variant == "fp32" else f"model_{variant.replace('-', '_')}.onnx"


def _builder(kind: str, graph: Path, destination: Path, options: ExportOptions, tokenizer,
             calibration: tuple[list[str], list[str] | None] | None,
             fused: str | None) -> Callable[[dict, list[str]], dict]:
    """A function that builds `kind` from `graph` with given settings and describes what it did."""
    return lambda settings, nodes: _build(kind, graph, destination, options, tokenizer, calibration, fused,
                                          settings, nodes)


def _build(kind: str, graph: Path, destination: Path, options: ExportOptions, tokenizer, calibration,
           fused: str | None, settings: dict, nodes: list[str]) -> dict:
    if kind == "fp16":
        q.convert_fp16(graph, destination, keep_fp32_nodes=nodes)
        return {"type": "fp16", "io": "float32", "fp32_ops": q.FP16_FRAGILE_OPS, "float_nodes": nodes}
    texts, pairs = calibration or ([], None)
    names = [i.name for i in create_session(graph, "cpu").get_inputs()]
    feeds = (encode(tokenizer, [t], None if pairs is None else [pairs[i]], names) for i, t in enumerate(texts))
    if kind == "int8-ov":
        q.quantize_openvino_int8(graph, destination, feeds, len(texts), settings["preset"], exclude=nodes,
                                 progress=options.progress)
        return {"type": kind, "tool": "nncf", "preset": settings["preset"], "per_channel": True,
                "float_nodes": nodes, "calibration_texts": len(texts), "source": "fp32 export (unfused)"}
    described = {"type": kind, "preset": options.quant_preset, "per_channel": settings["per_channel"],
                 "float_nodes": nodes, "source": f"{fused}-fused graph" if fused else "fp32 export (unfused)"}
    if kind == "int8":
        q.quantize_dynamic_int8(graph, destination, options.quant_preset, settings["per_channel"], exclude=nodes)
        return described
    q.quantize_static_int8(graph, destination, options.quant_preset, feeds, len(texts), options.calibration_method,
                           settings["per_channel"], exclude=nodes, progress=options.progress)
    return {**described, "calibration_method": options.calibration_method, "calibration_texts": len(texts)}


# -- the manifest ----------------------------------------------------------------------------

def _write_manifest(out: Path, options: ExportOptions, source: _Source, variants: list[Variant], default: str,
                    inputs: list[str], reference: dict, guard: str, eval_source: str | None, texts: int,
                    auto: dict | None, pytorch: dict) -> None:
    write_manifest(out, ARTIFACT_KIND, {
        "source_model": str(source.path.absolute()),
        "source_checkpoint": (source.manifest or {}).get("source_model"),
        "task": "text-classification",
        **source.scheme.manifest_fields(),
        "max_length": source.max_length,
        "inputs": inputs,
        "outputs": ["logits"],
        "tokenizer": "tokenizer.json",
        "text_column": source.columns["text_column"],
        "text_pair_column": source.columns["pair_column"],
        "label_column": source.columns["label_column"],
        "label_columns": source.columns["label_columns"],
        "device": options.device,
        "default_variant": default,
        "evaluation": {
            "source": eval_source,
            "texts": texts,
            "guard": guard,
            "metric": source.scheme.metric,
            "max_accuracy_drop": options.max_accuracy_drop,
            "reference": {"framework": "pytorch", **reference},
            "pytorch": pytorch,
        },
        "variants": {v.name: v.entry() for v in variants if v.shipped},
        "rejected": {v.name: v.entry() for v in variants if not v.shipped},
        **({"auto": auto} if auto else {}),
    })
