"""Which engines a `bench` run times: PyTorch and the variants of its artifact, and of each `--compare` artifact.

An artifact's engines are all it ships that this machine can run (on CUDA, not INT8 nor OpenVINO), the
predictor's `auto` where the export has ranges, and the PyTorch model its manifest names; a compared artifact
must classify the same labels, and its engines are named `<label>:<variant>`. The files an engine loads are
checked against the manifest's sha256 here, before any timing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from bertdeploy.artifacts import MANIFEST_NAME, verify_files
from bertdeploy.benchmark.engines import AUTO, Engine
from bertdeploy.benchmark.options import BenchOptions
from bertdeploy.builder.kinds import integer
from bertdeploy.builder.reference import PYTORCH, PYTORCH_BF16, computes_bf16
from bertdeploy.errors import BertdeployError, extra_hint
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.backends import OPENVINO, import_openvino, openvino_installed
from bertdeploy.runtime.sessions import PROVIDERS, resolve_providers

logger = logging.getLogger(__name__)


class Compared(NamedTuple):
    """Another exported artifact in the run: its engines are named `label:variant`."""

    directory: Path
    label: str  # the directory's name, made unique
    manifest: ExportManifest


def compared_artifacts(options: BenchOptions, manifest: ExportManifest) -> list[Compared]:
    """Each `options.compare` directory, its label (the directory's name, made unique) and its manifest; refused
    unless it is an exported artifact with the same labels, in the same order, and the same problem type."""
    scheme, compared, labels = manifest.scheme, [], set()
    for directory in options.compare:
        try:
            other = ExportManifest.read(directory)
        except BertdeployError as e:
            raise BertdeployError(f"{e} (--compare takes a directory that bertdeploy export wrote)") from None
        theirs = other.scheme
        if other.pairs != manifest.pairs:
            raise BertdeployError(f"--compare {directory}: one of it and {options.artifact_dir} classifies text pairs "
                                  "and the other single texts; compare models of the same task")
        if (theirs.labels, theirs.multi_label) != (scheme.labels, scheme.multi_label):
            raise BertdeployError(
                f"--compare {directory}: its labels ({', '.join(theirs.labels)}; {theirs.problem_type}) are not "
                f"those of {options.artifact_dir} ({', '.join(scheme.labels)}; {scheme.problem_type})")
        name, n = directory.resolve().name, 1
        label = name
        while label in labels:
            n += 1
            label = f"{name}-{n}"
        labels.add(label)
        compared.append(Compared(directory, label, other))
    return compared


def pick_engines(options: BenchOptions, manifest: ExportManifest, compared: Path | None = None) -> list[Engine]:
    """PyTorch and the variants of `options.artifact_dir`, or of the `compared` artifact (`manifest` is its): all
    it ships (`options.variants` and `pytorch_model` are the run's own artifact's), and its manifest's model."""
    directory, device, threads = compared or options.artifact_dir, options.device, options.threads
    if device == "cuda":
        _check_cuda()
    given = None if compared else options.pytorch_model
    model = Path(given or manifest.source_model or "")
    if not (model / "config.json").is_file():
        where = "given with --pytorch-model" if given else f"named in {directory / MANIFEST_NAME}"
        hint = "" if compared else "; pass --pytorch-model with the fine-tuned model directory"
        raise BertdeployError(f"no PyTorch model to compare with: {model} ({where}) has no config.json{hint}")
    shipped = manifest.variants
    tokenizer, files = manifest.files(directory)
    wanted = None if compared else options.variants
    for name in wanted or []:
        if name not in shipped and not (name == AUTO and manifest.auto is not None):
            refused = " (it was refused at export)" if name in manifest.rejected else ""
            raise BertdeployError(f"{directory}: no variant {name!r}{refused}; it has {', '.join(shipped)}")
        if name in shipped and shipped[name].backend == OPENVINO:
            import_openvino()  # names the missing extra
    if wanted is None:  # ONNX Runtime's CUDA provider has no fast integer kernels; OpenVINO runs on the CPU
        wanted = [n for n, v in shipped.items() if device == "cpu" or not integer(v.kind)]
        wanted = [n for n in wanted if device == "cpu" or shipped[n].backend != OPENVINO]
        skipped = [n for n in wanted if shipped[n].backend == OPENVINO and not openvino_installed()]
        if skipped:
            logger.warning("skipping %s: openvino is not installed (%s)", ", ".join(skipped), extra_hint("openvino"))
        wanted = [n for n in wanted if n not in skipped]
        if device == "cpu" and manifest.auto is not None:
            wanted.append(AUTO)
    # PyTorch reads the feeds of a trimmed export's tokenizer through their tokens (reference.TorchModel)
    pytorch = {"allow_pickle": options.allow_pickle,
               "ids_from": str(tokenizer.path) if manifest.trimmed else None}
    pytorch = {**pytorch, "backend": "pytorch", "path": str(model), "device": device, "threads": threads}
    engines = [Engine(name=PYTORCH, kind="fp32", **pytorch)]
    if computes_bf16(device):  # one line of autocast: the fastest PyTorch a user gets on such hardware
        engines.append(Engine(name=PYTORCH_BF16, kind="bf16", **pytorch))
    if device == "cuda":
        engines.append(Engine(name=f"{PYTORCH}-fp16", kind="fp16", **pytorch))
    for name in wanted:
        if name == AUTO:
            engines.append(Engine(name=AUTO, backend="auto", path=str(directory), kind="auto", device=device,
                                  threads=threads, verify=options.verify))
            continue
        path = files[name].path
        if not path.is_file():
            raise BertdeployError(f"{path}: missing; the manifest lists it as variant {name!r}")
        entry = shipped[name]
        engines.append(Engine(name=name, backend=entry.backend, path=str(path), kind=entry.kind, device=device,
                              threads=threads, precision=entry.precision))
    if options.verify:  # the variants timed directly; the auto engine's predictor checks its own
        verify_files([tokenizer, *(files[name] for name in wanted if name != AUTO)])
    return [replace(e, artifact=str(directory)) for e in engines]


def runnable(manifest: ExportManifest) -> list[str]:
    """The variants this machine can run: all but OpenVINO's when openvino is not installed."""
    return [n for n, v in manifest.variants.items() if v.backend != OPENVINO or openvino_installed()]


def _check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise BertdeployError("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    resolve_providers([PROVIDERS["cuda"]])  # names the missing onnxruntime-gpu
