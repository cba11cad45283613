"""Frozen dataclasses read from JSON and written back: the machinery under the manifest's sections.

`Record.to_dict` gives a section's JSON object (fields in order, `extra` last, None left out where a field says
so); `Reader.record` builds a section from JSON, checking what each field's metadata says and naming the file and
the field in every error. `nested` declares a field holding sections. It knows nothing of manifests' contents
(manifest.py) and touches no file. Standard library only.
"""

from __future__ import annotations

import datetime
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertdeploy.errors import BertdeployError


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def omitted() -> Any:
    """A field left out of the JSON while it is None (an earlier release did not write it, or it does not apply)."""
    return field(default=None, metadata={"omit_none": True})


def nested(cls: type, many: type | None = None, omit_none: bool = False, **more: Any) -> Any:
    """A field holding a `cls` section (`many=dict`: sections by name; `many=tuple`: a list of them), each read
    with `cls`'s own checks."""
    def parse(reader: Reader, raw: Any, key: str) -> Any:
        if many is None:
            return reader.record(cls, raw, key)
        if not isinstance(raw, dict if many is dict else list):
            raise reader.error(f"{key} is {raw!r}, not {'an object' if many is dict else 'a list'}")
        if many is dict:
            return {name: reader.record(cls, entry, f"{key}.{name}") for name, entry in raw.items()}
        return tuple(reader.record(cls, entry, f"{key}[{i}]") for i, entry in enumerate(raw))
    return field(metadata={"parse": parse, "omit_none": omit_none}, **more)


def plain(value: Any) -> Any:
    """`value` as JSON holds it: sections as objects, tuples as lists."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def strings(value: Any, name: str, empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value) or not (value or empty):
        raise ValueError(f"{name} is {value!r}, not a{'' if empty else ' non-empty'} list of names")
    return tuple(value)


def count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} is {value!r}, not a whole number of at least 1")
    return value


def set_fields(record: object, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(record, name, value)


class Record:
    """A section of a manifest: `to_dict` gives its JSON object, fields in order (`extra` last, where kept)."""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.metadata.get("omit_none")):
                continue
            out[f.name] = plain(value)
        out.update(getattr(self, "extra", {}))
        return out


@dataclass(frozen=True)
class Reader:
    """Builds sections from JSON, naming the manifest and the field in each error, with what to do (`hint`)."""

    path: Path
    hint: str

    def error(self, problem: str) -> BertdeployError:
        return BertdeployError(f"{self.path}: {problem}; {self.hint}")

    def record(self, cls: type, raw: Any, where: str = "") -> Any:
        if not isinstance(raw, dict):
            raise self.error(f"{where or 'the manifest'} is {raw!r}, not an object")
        values: dict[str, Any] = {}
        names = [f.name for f in fields(cls) if f.name != "extra"]
        for f in fields(cls):
            key = f"{where}.{f.name}" if where else f.name
            if f.name == "extra":
                values["extra"] = {k: v for k, v in raw.items() if k not in names}
            elif f.name in raw:
                parse = f.metadata.get("parse")
                values[f.name] = raw[f.name] if raw[f.name] is None or parse is None else parse(self, raw[f.name], key)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise self.error(f"no {key!r}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise self.error(f"{where + ': ' if where else ''}{e}") from None
