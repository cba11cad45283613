"""What a `bench` run is told: the artifact, the engines, the inputs, the rounds; checked once, as it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertdeploy.benchmark import report as reporting
from bertdeploy.defaults import (
    BENCH_BATCH_SIZES,
    BENCH_RUNS,
    BENCH_SEQ_LENGTHS,
    BENCH_WARMUP,
    DEVICE,
    EVAL_SAMPLES,
    RECORD_ROUTES,
    VERIFY,
)
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.host import usable_cpus
from bertdeploy.runtime.sessions import check_device


@dataclass
class BenchOptions:
    artifact_dir: Path
    pytorch_model: Path | None = None  # default: the model directory the manifest names
    eval_file: Path | None = None  # real texts (and labels, for accuracy); the manifest's columns
    texts_file: Path | None = None  # texts timed at their natural lengths, in place of the eval file's
    natural_lengths: bool = True  # time real texts at their natural lengths (the eval file's or texts_file's)
    variants: list[str] | None = None  # default: every shipped variant (on CUDA, all but INT8)
    batch_sizes: list[int] = field(default_factory=lambda: list(BENCH_BATCH_SIZES))
    seq_lengths: list[int] = field(default_factory=lambda: list(BENCH_SEQ_LENGTHS))
    runs: int = BENCH_RUNS
    warmup: int = BENCH_WARMUP
    threads: int | None = None  # default: the CPUs this process may use
    device: str = DEVICE
    eval_samples: int = EVAL_SAMPLES  # accuracy on at most this many eval texts (a stratified sample)
    progress: bool = False
    record: bool = RECORD_ROUTES  # write the size ranges for backend="auto" into the manifest (CPU only)
    verify: bool = VERIFY  # refuse a variant or tokenizer file whose sha256 is not the manifest's
    allow_pickle: bool = False  # compare with a PyTorch model whose weights are pickled only (pytorch_model.bin)
    json_file: Path | None = None  # write every figure here as JSON
    plot_file: Path | None = None  # write charts here (PNG; the plot extra)
    compare: list[Path] = field(default_factory=list)  # other exported artifacts to time beside it, same texts

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)
        check_options([
            (bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch sizes must be at least 1"),
            (all(n >= 2 for n in self.seq_lengths), "sequence lengths must be at least 2"),
            (self.runs >= 1, "runs must be at least 1"),
            (self.warmup >= 0, "warmup must be 0 or more"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
        ])
        check_device(self.device)
        check_options([(self.eval_samples >= 1, "eval_samples must be at least 1")])
        self.batch_sizes, self.seq_lengths = sorted(set(self.batch_sizes)), sorted(set(self.seq_lengths))
        self.threads = self.threads or usable_cpus()
        for path in (self.json_file, self.plot_file):
            if path is not None and not Path(path).absolute().parent.is_dir():
                raise BertdeployError(f"{path}: its directory does not exist")
        if self.plot_file is not None:
            reporting.check_plotting()
        self.compare = [Path(p) for p in self.compare]
        seen = [self.artifact_dir.resolve()]
        for other in self.compare:
            check_options([(other.resolve() != seen[0], f"--compare {other}: that is the artifact being measured"),
                           (other.resolve() not in seen, f"--compare {other}: given twice")])
            seen.append(other.resolve())
