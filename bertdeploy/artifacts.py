"""The files of an output directory: staged, hashed, checked, written in one step.

A stage writes into a staging directory beside its destination and moves it into place only
when everything is written, so a directory with a manifest is always a finished one; the next stage
writing to the same place removes staging directories whose process died (their names hold its host and
pid). The files an export's manifest names must stay inside its directory (`inside`), and a loaded file must
have the sha256 the manifest records (`verify_files`): a damaged or replaced file is refused. What the
manifest holds, and its reading and writing, are manifest.py's. Standard library only: the predictor stands on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

from bertdeploy.errors import BertdeployError, OutputDirError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
HASH_CHUNK = 1 << 20  # bytes read at a time: hashing a large model never holds it in memory


def sha256_file(path: str | Path) -> str:
    """The file's sha256 as hex, read in chunks of HASH_CHUNK bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class NamedFile:
    """A file a manifest names: where it is, what it is (for messages), and its recorded sha256 (None: not
    recorded, in manifests written before it was)."""

    path: Path
    what: str
    sha256: str | None


def inside(directory: Path, name: object, what: str) -> Path:
    """`directory / name`, refused unless it stays inside `directory`: no absolute path, no `..`, no symlink
    leading out."""
    manifest = directory / MANIFEST_NAME
    if not isinstance(name, str) or not name:
        raise BertdeployError(f"{manifest}: {what} has no file name; re-export the model")
    if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise BertdeployError(f"{manifest}: {what} is {name!r}, outside the artifact directory; a manifest names "
                              "files inside it only: re-export the model")
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise BertdeployError(f"{path}: {what} is a link that leads out of the artifact directory, to "
                              f"{path.resolve()}; copy the file in its place or re-export the model")
    return path


def verify_files(files: Iterable[NamedFile]) -> None:
    """Refuse any of `files` whose sha256 is not the one the manifest records (each distinct file hashed once);
    one with none recorded is not checked, which the debug log says."""
    for file in {f.path: f for f in files}.values():
        if file.sha256 is None:
            logger.debug("%s: the manifest records no sha256 for %s (an older export); not verified", file.path,
                         file.what)
            continue
        if not file.path.is_file():
            raise BertdeployError(f"{file.path}: missing; the manifest lists it as {file.what}. "
                                  "Copy the whole artifact directory")
        found = sha256_file(file.path)
        if found != file.sha256:
            raise BertdeployError(
                f"{file.path}: {file.what} has sha256 {found}, but the manifest records {file.sha256}: the file "
                "changed after export (damaged or replaced); re-export the model, or pass --no-verify "
                "(verify=False) to load it unchecked")


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


def _staging_prefix(destination: Path) -> str:
    """The start of a staging directory's name: the destination's, this host's and this process's id."""
    return f".{destination.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(destination: str | Path) -> list[Path]:
    """Remove the staging directories beside `destination` whose process is gone (killed before it could move
    or delete its directory), logging each; those of live processes, and of other hosts sharing the folder,
    stay."""
    destination = Path(destination).absolute()
    owned = re.compile(re.escape(f".{destination.name}.tmp-{socket.gethostname()}-") + r"(\d+)-[^-]+")
    removed = []
    if not destination.parent.is_dir():
        return removed
    for path in destination.parent.iterdir():
        match = owned.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and not _alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed %s, left by process %s, which died before finishing", path.name, match[1])
            removed.append(path)
    return removed


@contextmanager
def staging_dir(destination: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside `destination`; move it there on success, delete it on failure. Stale
    staging directories of earlier runs to the same place are removed first (`remove_stale_staging`)."""
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(destination)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(destination), dir=destination.parent))
    _ordinary_permissions(staging, 0o777)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        move_into_place(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def writable(directory: str | Path) -> bool:
    """Whether a file can be made in `directory` now (a read-only volume, a directory of another user's: no), found
    by making and removing one, since permission bits do not tell a read-only mount."""
    try:
        handle, name = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


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
