"""The option sets several commands share: the runtime's (predict, serve), the training run's (finetune,
distill) and --allow-pickle. Click declarations only; cli.py applies them to its commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from bertdeploy import defaults

RUNTIME_OPTIONS = [
    click.option("--variant", help="Run this exported variant only (default: see --backend)."),
    click.option("--backend", default=defaults.AUTO, show_default=True,
                 type=click.Choice([defaults.AUTO, *defaults.BACKENDS]),
                 help="auto: each batch on the variant measured fastest for its size (see `bench`)."),
    click.option("--max-batch-tokens", type=int,
                 help=f"Texts per model run x padded length [{defaults.CPU_BATCH_TOKENS} on the CPU, "
                      f"{defaults.GPU_BATCH_TOKENS} on a GPU]."),
    click.option("--threads", type=int, help="Intra-op threads (default: the CPUs this process may use)."),
    click.option("--providers", default=defaults.PROVIDERS, show_default=True,
                 help="cpu, cuda or tensorrt (comma-separated, first choice first)."),
    click.option("--allow-fallback", is_flag=True, help="Run on the CPU when the providers asked for cannot load."),
    click.option("--spinning/--no-spinning", default=defaults.SPINNING, show_default=True,
                 help="ONNX Runtime's threads spin a moment after each call to catch the next one (faster single "
                      "texts; a stream of sparse requests costs more CPU)."),
    click.option("--precision", type=click.Choice(defaults.PRECISIONS),
                 help="OpenVINO variants' inference precision (default: the one export judged each at, in the "
                      "manifest)."),
    click.option("--verify/--no-verify", default=defaults.VERIFY, show_default=True,
                 help="Refuse a model or tokenizer file whose sha256 is not the one the manifest records."),
]


ALLOW_PICKLE = click.option(
    "--allow-pickle", is_flag=True,
    help="Load a checkpoint whose weights are pickled only (pytorch_model.bin), which can run code as it loads; "
         "without it only safetensors weights are read.")


def runtime(command):
    """The runtime's options (RuntimeOptions' fields), shared by predict and serve."""
    for option in reversed(RUNTIME_OPTIONS):
        command = option(command)
    return command


def training(epochs: float | None, learning_rate: float | None,
                      defaults_shown: tuple[str, str] | None = None):
    """The training run's options, shared by finetune and distill (whose defaults differ; None: decided later, as
    `defaults_shown` says)."""
    shown_epochs, shown_rate = defaults_shown or (True, True)
    options = [
        click.option("--eval-file", type=click.Path(path_type=Path), help="Held-out data; else a stratified split."),
        click.option("--epochs", default=epochs, type=float, show_default=shown_epochs),
        click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True),
        click.option("--learning-rate", default=learning_rate, type=float, show_default=shown_rate),
        click.option("--weight-decay", default=defaults.WEIGHT_DECAY, show_default=True),
        click.option("--warmup-ratio", default=defaults.WARMUP_RATIO, show_default=True),
        click.option("--freeze-embeddings", is_flag=True,
                     help="Keep the word-embedding table as pretrained: a multilingual model (most of whose weights it "
                          "is) trains faster, and words the training texts lack keep vectors in step with the rest."),
        click.option("--group-by-length", is_flag=True,
                     help="Batch texts of similar length: faster, but may cost accuracy when length tracks the label."),
        click.option("--early-stopping-patience", type=int,
                     help="Stop after N epochs without a better macro-F1 (micro-F1 for multi-label)."),
        click.option("--seed", default=defaults.SEED, show_default=True),
        click.option("--max-train-samples", type=int, help="Train on a stratified sample of N rows."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint."),
        ALLOW_PICKLE,
        click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply
