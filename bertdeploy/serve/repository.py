"""The model repository `bertdeploy serve --model-repository ROOT` reads: its folders, versions and policy.

`ROOT/<name>/<version>/` holds an export, `<version>` a positive integer; `ROOT/<name>/` holding a manifest
directly is that model's version 1. Anything else under ROOT is not a model (hidden entries, files, folders
whose names are no model names) and anything else under a model's folder is not a version (`3.incoming`: copy
a version there, then rename it to `3`). A version is complete once its `manifest.json` reads as an export's
and every file it names is there at the size it records: a folder still being copied is not, and is never
loaded. A version's fingerprint (its files' names, sizes and times) tells when it changed. The policy says
which complete versions of a model are served: the newest (`latest`), the newest N (`latest:N`) or `all`.
Reads the file system only: loading and serving the versions is models.py's and loader.py's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bertdeploy.artifacts import MANIFEST_NAME
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import ExportManifest

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a model's name: its folder's, and the v2 protocol's
LATEST, ALL = "latest", "all"


@dataclass(frozen=True)
class Policy:
    """Which complete versions of a model are served: the newest `count` (None: all of them)."""

    count: int | None = 1

    @classmethod
    def parse(cls, text: str) -> Policy:
        """`latest`, `latest:N` (N >= 1) or `all`; BertdeployError otherwise."""
        if text == ALL:
            return cls(None)
        found = re.fullmatch(rf"{LATEST}(?::([1-9][0-9]*))?", text)
        if found is None:
            raise BertdeployError(f"--version-policy {text!r}: use latest, latest:N (N at least 1) or all")
        return cls(int(found.group(1) or 1))

    def choose(self, versions: list[int]) -> list[int]:
        """The versions to serve among `versions`, newest first."""
        newest = sorted(versions, reverse=True)
        return newest if self.count is None else newest[:self.count]

    def __str__(self) -> str:
        return ALL if self.count is None else LATEST if self.count == 1 else f"{LATEST}:{self.count}"


@dataclass(frozen=True)
class Version:
    """One version folder of a model: its path, its fingerprint, and why it is not complete (None: it is)."""

    name: str
    number: int
    path: Path
    fingerprint: tuple
    problem: str | None

    @property
    def complete(self) -> bool:
        return self.problem is None


def models(root: Path) -> list[str]:
    """The model folders' names in `root`, sorted; BertdeployError when `root` is no directory."""
    if not root.is_dir():
        raise BertdeployError(f"{root}: no such directory (--model-repository)")
    try:
        return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and NAME.fullmatch(entry.name))
    except OSError as e:
        raise BertdeployError(f"{root}: cannot be read: {e.strerror or e} (--model-repository)") from None


def versions(root: Path, name: str) -> list[Version]:
    """The version folders of model `name` in `root`, newest first (empty when it has none, or no folder)."""
    folder = root / name
    if not folder.is_dir():
        return []
    try:
        entries = [entry for entry in folder.iterdir() if entry.is_dir()]
    except OSError:  # removed while we looked, or unreadable: no versions this time
        return []
    if (folder / MANIFEST_NAME).exists():
        numbered = [entry.name for entry in entries if version_number(entry.name)]
        if numbered:
            return [Version(name, 1, folder, (), f"{folder} holds both a {MANIFEST_NAME} and version folders "
                                                 f"({', '.join(sorted(numbered))}); keep one of the two layouts")]
        return [_version(name, 1, folder)]
    found = [(version_number(entry.name), entry) for entry in entries]
    return [_version(name, number, path) for number, path in sorted(found, reverse=True) if number]


def scan(root: Path) -> dict[str, list[Version]]:
    """Every model of the repository and its version folders, newest first."""
    return {name: versions(root, name) for name in models(root)}


def chosen(found: list[Version], policy: Policy, complete_only: bool = True) -> list[Version]:
    """The versions `policy` serves among `found` (only the complete ones, unless `complete_only` is False)."""
    by_number = {v.number: v for v in found if v.complete or not complete_only}
    return [by_number[n] for n in policy.choose(list(by_number))]


def version_number(text: str) -> int:
    """The version a folder's name (or a route's path) gives: a positive integer, no sign or leading zero; else 0."""
    return int(text) if re.fullmatch(r"[1-9][0-9]{0,8}", text) else 0


def _version(name: str, number: int, path: Path) -> Version:
    try:
        return Version(name, number, path, _fingerprint(path), _problem(path))
    except OSError as e:  # a file unreadable, or removed while we looked
        return Version(name, number, path, (), f"{path}: cannot be read: {e.strerror or e}")


def _fingerprint(path: Path) -> tuple:
    """Each file's name, size and modification time under `path`: another value means it changed."""
    entries = []
    for file in sorted(path.rglob("*")):
        try:
            stat = file.stat()
        except OSError:  # removed while we looked: the next look sees it changed
            continue
        if file.is_file():
            entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _problem(path: Path) -> str | None:
    """Why the export in `path` is not complete (no manifest yet, or not all of it, a file missing or short), else
    None. A whole manifest that is no export's (another kind, another release's) is complete: its load fails."""
    manifest_file = path / MANIFEST_NAME
    if not manifest_file.is_file():
        return f"{path}: no {MANIFEST_NAME} yet (copy it last, or copy the folder under another name and rename it)"
    try:
        json.loads(manifest_file.read_bytes())
    except ValueError as e:
        return f"{manifest_file}: not valid JSON yet ({e})"
    try:
        manifest = ExportManifest.read(path)
        tokenizer, files = manifest.files(path)
    except BertdeployError:
        return None
    if not tokenizer.path.is_file():
        return f"{tokenizer.path}: missing; the manifest names it as the tokenizer"
    for name, file in files.items():
        expected = manifest.variants[name].size_bytes
        if not file.path.is_file():
            return f"{file.path}: missing; the manifest names it as variant {name!r}"
        if expected is not None and file.path.stat().st_size != expected:
            return (f"{file.path}: {file.path.stat().st_size} bytes, but the manifest records {expected} for variant "
                    f"{name!r} (still being copied?)")
    return None
