"""Each artifact directory's `manifest.json` as frozen dataclasses: read and checked once, written from one object.

`ModelManifest` is a fine-tuned model's (kind `model`: finetune and distill write it), `ExportManifest` an
export's (kind `onnx`: export writes it, bench records its `auto` section). `read` checks once what every reader
needs, and names the file and the field that is wrong: the schema version, the kind, the required fields, and for
an export that each file it names lies inside its directory. The rest of bertdeploy reads fields, never the JSON;
`write` puts the JSON back, its keys in the order of the fields.

A manifest an earlier release wrote loads: a field it did not write takes its default here, once (a variant
without `backend` ran on ONNX Runtime; missing columns are the default ones). Fields this release does not know
load too: at the top level and in a variant they are kept in `extra` and written back; inside the other sections
they are left out. It checks no file's hash and writes nothing but the manifest: artifacts.py hashes and stages
files. Standard library and numpy (the label scheme) only: the predictor reads manifests through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bertdeploy.artifacts import MANIFEST_NAME, NamedFile, atomic_file, inside
from bertdeploy.defaults import LABEL_COLUMN, LABEL_SEPARATOR, MAX_ACCURACY_DROP, ONNXRUNTIME, TEXT_COLUMN
from bertdeploy.errors import BertdeployError
from bertdeploy.labels import MULTI_LABEL, SINGLE_LABEL, LabelScheme
from bertdeploy.records import Reader, Record, count, nested, now, omitted, set_fields, strings
from bertdeploy.version import __version__

SCHEMA_VERSION = 1
MODEL_KIND, EXPORT_KIND = "model", "onnx"
TASK = "text-classification"
TOKENS = "padded tokens"  # what an auto section's sizes count: texts x padded length of a batch


# -- the sections ----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Columns(Record):
    """The data's columns, which later stages default to (the defaults where a manifest names none)."""

    text_column: str = TEXT_COLUMN
    text_pair_column: str | None = None
    label_column: str = LABEL_COLUMN
    label_columns: tuple[str, ...] | None = None  # multi-label data with one 0/1 column per label

    def __post_init__(self) -> None:
        set_fields(self, text_column=self.text_column or TEXT_COLUMN, label_column=self.label_column or LABEL_COLUMN,
             label_columns=None if self.label_columns is None else strings(self.label_columns, "label_columns"))


@dataclass(frozen=True, kw_only=True)
class VariantEntry(Record):
    """A variant in `variants` (shipped: with its file and sha256) or in `rejected` (with the reason)."""

    file: str | None = omitted()
    kind: str
    optimization: str | None = None
    quantization: dict | None = None
    size_bytes: int | None = None
    sha256: str | None = omitted()  # None: an earlier release recorded none, and the file is not checked
    opset: int | None = None
    parity: dict | None = None
    eval: dict | None = None
    reason: str | None = None
    attempts: list[dict] = field(default_factory=list)
    latency_ms: dict | None = None
    backend: str = ONNXRUNTIME  # an earlier release's variants, without the field, all ran on ONNX Runtime
    precision: str | None = None  # OpenVINO's inference precision, judged at and run at (None: the CPU's default)
    fused: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Exporter(Record):
    """How model.onnx was made: PyTorch's exporter (or `static`) and the ONNX opset."""

    name: str
    opset: int


@dataclass(frozen=True, kw_only=True)
class Evaluation(Record):
    """What the variants were judged on, by what, within what bound, against which PyTorch figures."""

    source: str | None = None
    texts: int | None = None
    guard: str | None = None  # accuracy or micro_f1 with labels, else agreement
    metric: str | None = omitted()
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # the bound in points that the variants were held to
    reference: dict | None = None
    pytorch: dict | None = omitted()


@dataclass(frozen=True, kw_only=True)
class AutoRoute(Record):
    """One size range of `auto`: batches up to `max_tokens` padded tokens (None: any larger) on `variant`."""

    max_tokens: int | None = None
    variant: str
    backend: str = ONNXRUNTIME


@dataclass(frozen=True, kw_only=True)
class AutoSection(Record):
    """What `backend="auto"` routes by: each variant's p50 per batch size, and the ranges they give."""

    measured_by: str
    threads: int | None = None
    inputs: str | None = None
    unit: str | None = omitted()  # TOKENS; None: an earlier release's sizes, in texts
    p50_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    eligible: tuple[str, ...] | None = None  # None: every variant
    routes: tuple[AutoRoute, ...] = nested(AutoRoute, many=tuple, default=())

    def __post_init__(self) -> None:
        set_fields(self, routes=tuple(self.routes),
             eligible=None if self.eligible is None else strings(self.eligible, "eligible"))

    def timings(self, max_length: int) -> dict[str, dict[int, float]]:
        """The measured latencies, variant -> {padded tokens: ms}. An earlier release's sizes count texts up to the
        max length: each counted as that many full rows (the order of its sizes, and so its routes, stay)."""
        scale = 1 if self.unit == TOKENS else max_length
        return {name: {int(size) * scale: float(ms) for size, ms in table.items()}
                for name, table in self.p50_ms.items()}


@dataclass(frozen=True, kw_only=True)
class DataFile(Record):
    """A data file as training read it."""

    path: str
    sha256: str | None = None
    rows: int | None = None


@dataclass(frozen=True, kw_only=True)
class ValSplit(Record):
    """The eval data held out of the training file."""

    fraction: float
    seed: int


@dataclass(frozen=True, kw_only=True)
class TrainingData(Record):
    """The data a model was trained and evaluated on."""

    train_file: DataFile | None = nested(DataFile, default=None)
    eval_file: DataFile | None = nested(DataFile, omit_none=True, default=None)
    val_split: ValSplit | None = nested(ValSplit, omit_none=True, default=None)
    train_rows: int | None = None
    eval_rows: int | None = None

    @property
    def eval_source(self) -> DataFile | None:
        """The file the eval data came from: the eval file, or the training file its split was held out of."""
        return self.eval_file or (self.train_file if self.val_split is not None else None)


# -- the manifests ---------------------------------------------------------------------------

class _Classifier:
    """What both kinds of manifest share: the classifier's label scheme and data columns, and reading and writing."""

    kind: ClassVar[str]
    hint: ClassVar[str]  # what to do about a bad manifest of this kind

    def __post_init__(self) -> None:
        columns = self.columns  # the defaults, where the manifest names no column
        set_fields(self, labels=strings(self.labels, "labels", empty=False),
             max_length=count(self.max_length, "max_length"), text_column=columns.text_column,
             label_column=columns.label_column, label_columns=columns.label_columns)
        self.scheme  # noqa: B018  (refuses thresholds that do not match the labels)

    @property
    def scheme(self) -> LabelScheme:
        multi = self.problem_type == MULTI_LABEL
        thresholds = self.thresholds
        if multi and thresholds and set(thresholds) != set(self.labels):
            raise ValueError(f"thresholds name {sorted(thresholds)}, not the labels {list(self.labels)}")
        return LabelScheme(self.labels, multi, [thresholds[x] for x in self.labels] if multi and thresholds else None,
                           self.label_separator or LABEL_SEPARATOR)

    @property
    def columns(self) -> Columns:
        return Columns(text_column=self.text_column, text_pair_column=self.text_pair_column,
                       label_column=self.label_column, label_columns=self.label_columns)

    @property
    def pairs(self) -> bool:
        """Whether the model classifies text pairs."""
        return self.text_pair_column is not None

    def write(self, directory: str | Path) -> None:
        """Write it as `directory`/manifest.json, in one step (a reader never sees half a manifest)."""
        with atomic_file(Path(directory) / MANIFEST_NAME) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: str | Path) -> Any:  # an instance of `cls`
        """The manifest of `directory`, checked: a schema version this release reads, this kind, every required
        field."""
        path, raw = _load(directory)
        reader = Reader(path, cls.hint)
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BertdeployError(f"{path}: schema version {version!r}, but this bertdeploy {__version__} reads "
                                  f"version {SCHEMA_VERSION}; re-run the stage that wrote it with this version")
        if raw.get("kind") != cls.kind:
            raise BertdeployError(f"{path}: this is a {raw.get('kind')!r} directory, expected {cls.kind!r}")
        manifest = reader.record(cls, raw)
        manifest.check_files(directory)
        return manifest

    def check_files(self, directory: str | Path) -> None:
        """Refuse a manifest naming a file outside `directory` (an export's)."""


@dataclass(frozen=True, kw_only=True)
class ModelManifest(_Classifier, Record):
    """A fine-tuned model directory's manifest (finetune, distill)."""

    hint: ClassVar[str] = "re-run the fine-tuning"

    schema_version: int = SCHEMA_VERSION
    kind: str = MODEL_KIND
    bertdeploy_version: str = __version__
    created: str = field(default_factory=now)
    source_model: str | None = None
    task: str = TASK
    problem_type: str = SINGLE_LABEL
    labels: tuple[str, ...]
    thresholds: dict[str, float] | None = omitted()
    label_separator: str | None = omitted()
    max_length: int
    text_column: str = TEXT_COLUMN
    text_pair_column: str | None = None
    label_column: str = LABEL_COLUMN
    label_columns: tuple[str, ...] | None = None
    data: TrainingData = nested(TrainingData, default_factory=TrainingData)
    vocabulary: dict | None = omitted()
    training: dict | None = omitted()
    metrics: dict | None = omitted()
    distillation: dict | None = omitted()
    extra: dict = field(default_factory=dict)

    @property
    def drop_empty(self) -> bool:
        """Whether training skipped rows with an empty text or label."""
        return bool((self.training or {}).get("drop_empty", False))

    @property
    def tune_thresholds(self) -> bool:
        """Whether the multi-label thresholds were tuned on the eval data."""
        return bool((self.training or {}).get("tune_thresholds", False))

    @property
    def teacher_dir(self) -> str | None:
        """The teacher a distilled student learned from (None: not a student)."""
        return (self.distillation or {}).get("teacher_dir")


@dataclass(frozen=True, kw_only=True)
class ExportManifest(_Classifier, Record):
    """An export directory's manifest (export; bench records `auto`)."""

    hint: ClassVar[str] = "re-export the model"

    schema_version: int = SCHEMA_VERSION
    kind: str = EXPORT_KIND
    bertdeploy_version: str = __version__
    created: str = field(default_factory=now)
    source_model: str | None = None
    source_checkpoint: str | None = None
    task: str = TASK
    problem_type: str = SINGLE_LABEL
    labels: tuple[str, ...]
    thresholds: dict[str, float] | None = omitted()
    label_separator: str | None = omitted()
    max_length: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] = ("logits",)
    tokenizer: str
    tokenizer_sha256: str | None = omitted()  # None: an earlier release recorded none, and it is not checked
    text_column: str = TEXT_COLUMN
    text_pair_column: str | None = None
    label_column: str = LABEL_COLUMN
    label_columns: tuple[str, ...] | None = None
    device: str = "cpu"
    exporter: Exporter | None = nested(Exporter, omit_none=True, default=None)
    default_variant: str
    evaluation: Evaluation = nested(Evaluation, default_factory=Evaluation)
    variants: dict[str, VariantEntry] = nested(VariantEntry, many=dict)
    rejected: dict[str, VariantEntry] = nested(VariantEntry, many=dict, default_factory=dict)
    auto: AutoSection | None = nested(AutoSection, omit_none=True, default=None)
    vocabulary: dict | None = omitted()
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_fields(self, inputs=strings(self.inputs, "inputs"), outputs=strings(self.outputs, "outputs"))
        if not isinstance(self.tokenizer, str):
            raise ValueError(f"tokenizer is {self.tokenizer!r}, not a file name")

    @property
    def max_accuracy_drop(self) -> float:
        """The accuracy bound in points that the variants were held to, and that bench holds its engines to."""
        return self.evaluation.max_accuracy_drop

    @property
    def trimmed(self) -> bool:
        """Whether the exported model's vocabulary was trimmed to the texts' (`--trim-vocabulary`)."""
        return bool((self.vocabulary or {}).get("trimmed"))

    def on(self, *backends: str) -> list[str]:
        """The variants that run on any of `backends`, in the manifest's order."""
        return [name for name, entry in self.variants.items() if entry.backend in backends]

    def files(self, directory: str | Path) -> tuple[NamedFile, dict[str, NamedFile]]:
        """The tokenizer and each variant's file in `directory`, with the sha256 recorded for it; each refused unless
        it lies inside `directory`."""
        directory = Path(directory)
        tokenizer = NamedFile(inside(directory, self.tokenizer, "the tokenizer"), "the tokenizer",
                              self.tokenizer_sha256)
        variants = {name: NamedFile(inside(directory, entry.file, f"variant {name!r}"), f"variant {name!r}",
                                    entry.sha256) for name, entry in self.variants.items()}
        return tokenizer, variants

    def check_files(self, directory: str | Path) -> None:
        self.files(directory)  # every file it names inside the directory, whatever the options


def _load(directory: str | Path) -> tuple[Path, dict]:
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BertdeployError(f"{directory}: no such directory")
    if not path.is_file():
        raise BertdeployError(f"{directory}: no {MANIFEST_NAME}; is this a directory bertdeploy wrote?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BertdeployError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise BertdeployError(f"{path}: not a manifest (a JSON object); is this a directory bertdeploy wrote?")
    return path, raw


def read_manifest(directory: str | Path) -> ModelManifest | ExportManifest:
    """The manifest of `directory`, of whichever kind it is."""
    path, raw = _load(directory)
    kinds = {MODEL_KIND: ModelManifest, EXPORT_KIND: ExportManifest}
    if raw.get("kind") not in kinds:
        raise BertdeployError(f"{path}: this is a {raw.get('kind')!r} directory, expected {MODEL_KIND!r} or "
                              f"{EXPORT_KIND!r}")
    return kinds[raw["kind"]].read(directory)
