"""Output directories and their versioned `manifest.json`, the contract between stages.

A stage writes into a staging directory beside its destination and moves it into place only
when everything is written, so a directory with a manifest is always a finished one.
Standard library only: the predictor reads manifests through this module too.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bertdeploy.errors import BertdeployError, OutputDirError
from bertdeploy.version import __version__

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path, kind: str, fields: dict) -> dict:
    """Write `manifest.json` with the schema version and provenance in front of `fields`."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "bertdeploy_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """Load and check a manifest: present, valid JSON, a schema version we read, the right kind."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BertdeployError(f"{directory}: no such directory")
    if not path.is_file():
        raise BertdeployError(f"{directory}: no {MANIFEST_NAME}; is this a directory bertdeploy wrote?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BertdeployError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BertdeployError(
            f"{path}: schema version {version!r}, but this bertdeploy {__version__} reads version "
            f"{SCHEMA_VERSION}; re-run the stage that wrote it with this version"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise BertdeployError(f"{path}: this is a {manifest.get('kind')!r} directory, expected {kind!r}")
    return manifest


def check_output_dir(path: str | Path, overwrite: bool) -> None:
    """Refuse to write over a non-empty directory (or a file) unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirError(f"{path}: the output directory is not empty; pass --overwrite to replace it")


def move_into_place(source: Path, destination: Path) -> None:
    """Put the finished directory `source` at `destination`, replacing what was there."""
    destination = Path(destination)
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
    os.replace(source, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _ordinary_permissions(path: Path, mode: int) -> None:
    """Give `path` the permissions a plain open()/mkdir() would: `mode` less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    path.chmod(mode & ~umask)


@contextmanager
def staging_dir(destination: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside `destination`; move it there on success, delete it on failure."""
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    _ordinary_permissions(staging, 0o777)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        move_into_place(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; it becomes `destination` only if the block succeeds,
    so a failure part-way never leaves a partial file posing as complete."""
    destination = Path(destination).absolute()
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.tmp-", dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _ordinary_permissions(temporary, 0o666)  # mkstemp makes it private; the result is an ordinary file
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
