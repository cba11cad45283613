"""The benchmark results as the docs tests read them: each JSON under benchmarks/results/, the machine block it
records and the host label RESULTS.md's machines table gives that machine; and a markdown page's lines outside its
code blocks."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RESULT_FILES = sorted((ROOT / "benchmarks" / "results").glob("*.json"))

# what bertdeploy.host.machine() writes, at the least (it adds os, python, and threads when given)
MACHINE_KEYS = {"cpu", "cpu_flags", "logical_cpus", "usable_cpus", "memory_gb", "versions"}
LABELS = ("EPYC-A", "EPYC-B", "EPYC-C", "Xeon-AMX")
LABEL = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, LABELS)) + r")(?![\w-])")


@functools.cache
def load(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text(encoding="utf-8"))


def machines(doc: dict) -> list:
    """The machine block of a result: its top-level `machine`, else each top-level run_* entry's (None where a run
    has none)."""
    if "machine" in doc:
        return [doc["machine"]]
    return [run.get("machine") if isinstance(run, dict) else None for key, run in doc.items() if key.startswith("run_")]


def host_label(machine: dict) -> str:
    """The label RESULTS.md's machines table gives the host that wrote `machine`."""
    cpu, flags = machine.get("cpu") or "", set(machine.get("cpu_flags") or [])
    if "Xeon" in cpu and "amx_int8" in flags:
        return "Xeon-AMX"
    if "EPYC" in cpu:
        if {"avx512_vnni", "avx_vnni"} <= flags:
            return "EPYC-A"
        if "avx512_vnni" in flags:
            return "EPYC-B"
        if "avx512f" not in flags:
            return "EPYC-C"
    pytest.fail(f"no label for the host {cpu!r} with {sorted(flags)}: add a row to RESULTS.md's machines table and "
                f"to host_label in tests/core/test_results.py")


def hosts(name: str) -> set[str]:
    """The labels of the hosts a result ran on (a missing or short machine block is
    test_every_result_names_its_machine's to report)."""
    return {host_label(machine) for machine in machines(load(name))
            if isinstance(machine, dict) and MACHINE_KEYS <= set(machine)}


def lines_outside_code(text: str) -> list[tuple[str, bool]]:
    """Each line of a markdown page, and whether it lies outside the ``` fenced blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append((line, False))
        else:
            lines.append((line, not fenced))
    return lines
