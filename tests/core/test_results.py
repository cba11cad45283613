"""The benchmark results name their machines: every JSON under benchmarks/results/ has a machine block, RESULTS.md
names each section's host (a row of its machines table) and links every JSON."""

from __future__ import annotations

import re

import pytest
from results import LABEL, LABELS, MACHINE_KEYS, RESULT_FILES, RESULTS, hosts, lines_outside_code, load, machines

# -- the machine of every result ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_result_names_its_machine(path):
    found = machines(load(path.name))
    assert found, f"benchmarks/results/{path.name}: no `machine` block (top level, or in every run_* entry): " \
                  f"have its script record bertdeploy.host.machine()"
    for machine in found:
        missing = sorted(MACHINE_KEYS - set(machine)) if isinstance(machine, dict) else sorted(MACHINE_KEYS)
        assert not missing, f"benchmarks/results/{path.name}: its machine block lacks {missing}: have its script " \
                            f"record bertdeploy.host.machine()"
        assert isinstance(machine["cpu_flags"], list) and isinstance(machine["versions"], dict), \
            f"benchmarks/results/{path.name}: cpu_flags should be a list and versions a dict, as " \
            f"bertdeploy.host.machine() writes them"


# -- RESULTS.md: its machines, each section's host, every JSON linked ---------------------------------------------


def machines_table() -> set[str]:
    """The host labels in the first column of RESULTS.md's `## Machines` table."""
    section = re.search(r"^## Machines[ \t]*\n(.*?)(?=^## |\Z)", RESULTS.read_text(encoding="utf-8"), re.S | re.M)
    assert section, "benchmarks/RESULTS.md has no `## Machines` section: add one, with a table whose first " \
                    f"column holds the host labels {', '.join(LABELS)}"
    rows = [line.strip().strip("|").split("|") for line in section.group(1).splitlines() if line.startswith("|")]
    body = [cells for cells in rows if not re.fullmatch(r"[\s:|-]*", "|".join(cells))][1:]  # after the header
    return {cells[0].strip().strip("`*").strip() for cells in body}


def test_the_machines_table_labels_each_host():
    labels = machines_table()
    assert labels, "benchmarks/RESULTS.md's machines table has no rows: a row per host label"
    unknown = labels - set(LABELS)
    assert not unknown, f"benchmarks/RESULTS.md's machines table has rows {sorted(unknown)} that host_label " \
                        f"(tests/core/test_results.py) never gives: add them there, or fix the row's label"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_result_ran_on_a_machine_of_the_table(path):
    missing = hosts(path.name) - machines_table()
    assert not missing, f"benchmarks/results/{path.name} ran on {sorted(missing)}, which RESULTS.md's machines " \
                        f"table has no row for: add a row to RESULTS.md's machines table and to host_label"


def sections(text: str) -> list[tuple[str, list[str]]]:
    """RESULTS.md cut at every heading (outside code blocks): (heading, its lines up to the next heading)."""
    found: list[tuple[str, list[str]]] = [("(before the first heading)", [])]
    for line, prose in lines_outside_code(text):
        if prose and line.startswith("#"):
            found.append((line, []))
        found[-1][1].append(line)
    return found


LINKED = re.compile(r"\(results/([\w.-]+\.json)\)")


def test_each_section_of_the_results_names_the_hosts_of_its_jsons():
    wrong = []
    for heading, lines in sections(RESULTS.read_text(encoding="utf-8")):
        linked = sorted({name for line in lines for name in LINKED.findall(line)})
        if not linked:
            continue
        host_lines = [line for line in lines if re.match(r"\s*(?:[-*]\s+)?\**Host\**:", line)]
        named = {label for line in host_lines for label in LABEL.findall(line)}
        ran_on = set().union(*(hosts(name) for name in linked if (RESULTS.parent / "results" / name).is_file()))
        if not host_lines:
            wrong.append(f"{heading!r} links {linked} but has no line starting `Host:`: add one naming "
                         f"{sorted(ran_on)}")
        elif named != ran_on:
            wrong.append(f"{heading!r}: its Host line names {sorted(named)}, its JSONs {linked} ran on "
                         f"{sorted(ran_on)} (as their machine blocks say): name those hosts' labels on its `Host:` "
                         f"line")
    assert not wrong, "benchmarks/RESULTS.md:\n" + "\n".join(wrong)


def test_the_results_link_every_json_and_only_those_there_are():
    linked = set(LINKED.findall(RESULTS.read_text(encoding="utf-8")))
    files = {path.name for path in RESULT_FILES}
    assert not files - linked, f"benchmarks/RESULTS.md links no {sorted(files - linked)}: link each " \
                               f"[`results/NAME.json`](results/NAME.json) in the section its figures are in"
    assert not linked - files, f"benchmarks/RESULTS.md links {sorted(linked - files)}, which benchmarks/results/ " \
                               f"does not hold: fix the link or commit the JSON"
