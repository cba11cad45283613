"""The work directory of a training run, `<output_dir>.partial/`, and resuming from it.

A run keeps its checkpoints and `run.json` (the settings it started with) there until it finishes.
This module decides whether a run may start or resume, finds the newest complete checkpoint and
refuses a resume whose settings differ from the interrupted run's. It does not train, and it does
not write the finished output directory.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from bertdeploy.artifacts import check_output_dir
from bertdeploy.errors import OutputDirError
from bertdeploy.manifest import TrainingData

logger = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its --resume.
RESUMABLE_CHANGES = {"epochs", "early_stopping_patience", "resume", "overwrite", "output_dir", "allow_pickle"}


def plan_output(output_dir: Path, work_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check the output and work directories; return the checkpoint to resume from, if any."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"{output_dir}: exists and is not a directory")
    if not resume:
        check_output_dir(output_dir, overwrite)
        if work_dir.exists() and not overwrite:
            raise OutputDirError(
                f"{work_dir}: an interrupted run is there; pass --resume to continue it or --overwrite to start again"
            )
        return None
    checkpoint = last_checkpoint(work_dir)
    if checkpoint is None and output_dir.is_dir() and any(output_dir.iterdir()):
        raise OutputDirError(
            f"{output_dir}: finished, and no interrupted run in {work_dir} to resume; pass --overwrite to train again"
        )
    if checkpoint is None:
        logger.warning("no checkpoint in %s to resume from; starting from the beginning", work_dir)
    else:
        logger.info("resuming from %s", checkpoint)
    return checkpoint


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a run
    killed while saving leaves a folder without it, which must not be resumed from."""
    complete = [
        p for p in (work_dir / "checkpoints").glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def run_fingerprint(settings: dict, data: TrainingData) -> dict:
    """What a resume must share with the interrupted run: the settings (less RESUMABLE_CHANGES) and the data's
    checksums."""
    settings = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}
    settings = json.loads(json.dumps(settings, default=str))
    files = {"train_file": data.train_file, "eval_file": data.eval_file}
    settings["data_sha256"] = {name: f.sha256 for name, f in files.items() if f is not None}
    return settings


def start_work_dir(work_dir: Path, fingerprint: dict) -> None:
    """An empty work directory holding the run's fingerprint as `run.json`."""
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    (work_dir / "run.json").write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False))


def check_same_run(work_dir: Path, fingerprint: dict) -> None:
    """Refuse to resume the run in `work_dir` with settings or data that differ from its `run.json`."""
    try:
        before = json.loads((work_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise OutputDirError(f"{work_dir}: no readable run.json; pass --overwrite to start again") from None
    changed = sorted(k for k in fingerprint.keys() | before.keys() if fingerprint.get(k) != before.get(k))
    if changed:
        raise OutputDirError(
            f"cannot resume: {', '.join(changed)} differ from the interrupted run in {work_dir}; "
            "use the same settings, or --overwrite to start again"
        )
