"""The README's figures hold: every figure of its Figures section is in a JSON the bullet cites, measured on a host
the text names, each multiple computed from its record; elsewhere in the README each figure with a unit of a
paragraph that cites a result or names a host is in such a result; and the quick start's output is the recorded
demo run's."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
from results import LABEL, README, RESULT_FILES, ROOT, hosts, lines_outside_code, load

# -- the README's figures -------------------------------------------------------------------------------------------

CITED = re.compile(r"benchmarks/results/([\w.-]+\.json)")


def figure_bullets() -> list[tuple[str, str]]:
    """The bullets of the README's `## Figures` section, each with the nearest paragraph before it that is no
    bullet (its lead-in, naming the host)."""
    section = re.search(r"^## Figures[ \t]*\n(.*?)(?=^## |\Z)", README.read_text(encoding="utf-8"), re.S | re.M)
    assert section, "README.md has no `## Figures` section"
    blocks: list[tuple[bool, list[str]] | None] = []  # (a bullet?, its lines); None: a blank line
    for line in section.group(1).splitlines():
        if line.startswith("- "):
            blocks.append((True, [line[2:]]))
        elif not line.strip():
            blocks.append(None)
        elif blocks and blocks[-1] is not None:
            blocks[-1][1].append(line.strip())  # a continuation line
        else:
            blocks.append((False, [line.strip()]))
    bullets, lead_in = [], ""
    for bullet, lines in filter(None, blocks):
        if bullet:
            bullets.append((" ".join(lines), lead_in))
        else:
            lead_in = " ".join(lines)
    return bullets


def _values(node, samples: bool = True) -> list[float]:
    """Every number in a JSON document: its numbers and the numbers written inside its strings (with `samples`
    False, less the elements of lists longer than RAW_SAMPLES)."""
    if isinstance(node, bool) or node is None:
        return []
    if isinstance(node, int | float):
        return [abs(float(node))]
    if isinstance(node, str):
        return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", node)]
    if isinstance(node, list) and not samples and len(node) > RAW_SAMPLES:
        return []
    items = node.values() if isinstance(node, dict) else node
    return [value for item in items for value in _values(item, samples)]


# a figure may be shown as the JSON's value, in percent or points (x100), in thousands (ms -> s, MB -> GB), in
# millions or billions (bytes -> MB, GB), or in minutes (/60)
SCALES = (1.0, 100.0, 1e-3, 1e-6, 1e-9, 1 / 60)
# A multiple (2.2x) may be the ratio of two of a result's numbers, and points the difference of two, but only of two
# that are alike: two values of one record (the fields of one dict), or two values of the same field in different
# records (the p50_ms of two engines). A list longer than RAW_SAMPLES is raw samples, never a figure.
RAW_SAMPLES = 20


def _groups(node, found: dict) -> None:
    """Collect in `found` the groups of alike numbers under `node`: each dict's own numbers, and each field name's."""
    if isinstance(node, dict):
        own = [abs(float(v)) for v in node.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        found.setdefault(("record", id(node)), []).extend(own)
        for key, value in node.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.setdefault(("field", key), []).append(abs(float(value)))
            else:
                _groups(value, found)
    elif isinstance(node, list) and len(node) <= RAW_SAMPLES:
        numbers = [abs(float(v)) for v in node if isinstance(v, int | float) and not isinstance(v, bool)]
        found.setdefault(("record", id(node)), []).extend(numbers)
        for item in node:
            if isinstance(item, dict | list):
                _groups(item, found)


@functools.cache
def _numbers(name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """A result's unique numbers (less raw samples), and the groups of alike ones a ratio or difference is taken
    within."""
    doc = load(name)
    found: dict = {}
    _groups(doc, found)
    groups = [np.unique(np.array(values, dtype=float)) for values in found.values() if len(values) > 1]
    return np.unique(np.array(_values(doc, samples=False), dtype=float)), [g[g > 0] for g in groups]


def traced(figure: str, names: list[str], unit: str = "") -> bool:
    """Whether `figure` (as the README shows it: '0.863', '4,000', '15') is, at the precision shown, a number of
    one of the results `names` scaled by one of SCALES; for a multiple (`unit` 'x'), the ratio of two of its
    numbers; for `unit` 'points', the difference of two of its numbers in points (two accuracies)."""
    target = float(figure.replace(",", ""))
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    tolerance = 0.5 * 10 ** -decimals * (1 + 1e-9)
    for name in names:
        every, groups = _numbers(name)
        if any(np.any(np.abs(every * scale - target) <= tolerance) for scale in SCALES):
            return True
        for values in groups if unit in ("x", "points") else []:
            if unit == "x":  # a / b near target: b between a / (target + tolerance) and a / (target - tolerance)
                low = values / (target + tolerance)
                high = values / (target - tolerance) if target > tolerance else np.full(values.shape, np.inf)
            else:  # (a - b) * 100 near target: b between a - (target + tolerance) / 100 and a - (target - tol.) / 100
                low, high = values - (target + tolerance) / 100, values - (target - tolerance) / 100
            if np.any(np.searchsorted(values, high, "right") > np.searchsorted(values, low, "left")):
                return True
    return False


UNIT = re.compile(r"\s?(?:x\b|%|[kMG]i?B\b|ms\b|s\b|points?\b|-?minutes?\b|seconds?\b)")


def figures(text: str, units_only: bool = False) -> list[tuple[str, str]]:
    """The figures a sentence states, each with its unit ('x', 'MB', 'points', ...; '' for none): its numbers,
    less those that are no measurement (with `units_only`, only those with a unit: 2.2x, 30 MB, 0.18 s)."""
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"`[^`]*`", " ", text)  # code: options, variant names, file names
    text = re.sub(r"\S*(?:/|\.json|\.py|\.sh)\S*", " ", text)  # paths and file names
    text = re.sub(r"\b\d+ x \d+\b", " ", text)  # input shapes (batch x tokens): what a figure was measured at
    found = []
    # digits that follow a letter or a dot are part of a name (MiniLM-L6, e5, avx512_vnni, int8, O2)
    for number in re.finditer(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+(?:\.\d+)?", text):
        value, unit = number.group(), UNIT.match(text, number.end())
        # a whole number up to 10 with no unit after it counts things (2 cores, a 4-layer student, 5 topics)
        if not unit and (units_only or re.fullmatch(r"\d+", value) and int(value) <= 10):
            continue
        found.append((value, "points" if unit and "point" in unit.group() else unit.group().strip() if unit else ""))
    return found


def test_each_readme_figure_cites_its_json_and_names_its_host():
    wrong = []
    for bullet, lead_in in figure_bullets():
        cited = CITED.findall(bullet)
        missing = [name for name in cited if not (ROOT / "benchmarks" / "results" / name).is_file()]
        if not cited or missing:
            wrong.append(f"'{bullet[:60]}...' cites no JSON" if not cited else
                         f"'{bullet[:60]}...' cites {missing}, which benchmarks/results/ does not hold")
            continue
        unnamed = set().union(*(hosts(name) for name in cited)) - set(LABEL.findall(bullet + " " + lead_in))
        if unnamed:
            wrong.append(f"'{bullet[:60]}...' cites JSONs of {sorted(unnamed)} but neither it nor its lead-in "
                         f"names them")
    assert not wrong, "README Figures: each bullet should cite the benchmarks/results/*.json holding its figures " \
                      "and name the host label (a row of RESULTS.md's machines table) they ran on:\n" + \
                      "\n".join(wrong)


def test_every_readme_figure_is_in_a_json_it_cites():
    wrong = []
    for bullet, _ in figure_bullets():
        cited = [name for name in CITED.findall(bullet) if (ROOT / "benchmarks" / "results" / name).is_file()]
        wrong += [f"README Figures: '{figure}' in '{bullet[:50]}...' is not in {cited}: cite the JSON that holds it"
                  for figure, unit in figures(bullet) if not traced(figure, cited, unit)]
    assert not wrong, "\n".join(wrong)


def prose_paragraphs() -> list[str]:
    """The README's paragraphs (a bullet is one) outside its code blocks, headings and Figures section."""
    paragraphs, current, in_figures = [], [], False
    for line, prose in lines_outside_code(README.read_text(encoding="utf-8")):
        heading = prose and line.startswith("#")
        in_figures = line.strip() == "## Figures" if heading else in_figures
        if current and (not prose or heading or not line.strip() or line.startswith("- ")):
            paragraphs.append(" ".join(current))
            current = []
        if prose and not heading and line.strip() and not in_figures:
            current.append(line.removeprefix("- ").strip())
    return paragraphs + ([" ".join(current)] if current else [])


def test_the_readmes_other_measured_figures_are_in_results():
    """Outside the Figures section, a paragraph that cites a result or names a host: each figure with a unit in it
    is in a JSON it cites or in a result of a host it names."""
    wrong = []
    for paragraph in prose_paragraphs():
        cited = {name for name in CITED.findall(paragraph) if (ROOT / "benchmarks" / "results" / name).is_file()}
        named = set(LABEL.findall(paragraph))
        if not cited and not named:
            continue
        sources = sorted(cited | {path.name for path in RESULT_FILES if hosts(path.name) & named})
        wrong += [f"README: '{figure}' in '{paragraph[:50]}...' is not in {sources}: cite the JSON that holds it"
                  for figure, unit in figures(paragraph, units_only=True) if not traced(figure, sources, unit)]
    assert not wrong, "\n".join(wrong)


# -- the README's quick start: the output of a recorded run ---------------------------------------------------------

RECORDED = "demo_e5_xeon.json"  # the demo run the quick start shows, recorded by benchmarks/demo_record.py
SKIPPED = re.compile(r"^\d+\+$")  # a route's first size (72+)


def transcript_figures(line: str) -> list[tuple[float, float, str]]:
    """The figures of one printed line, each as (value, tolerance at the precision shown, unit): the tokens that
    are numbers once a unit (ms, MB, s, %, x) and a table's best-mark (*) are taken off."""
    found = []
    for token in re.split(r"[\s;:()=]+|,(?=\s|$)", line):  # a comma then a space parts words, not thousands
        token = token.strip("*'\"")
        if SKIPPED.match(token):
            continue
        match = re.fullmatch(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(e-?\d+)?(ms|MB|s|%|x)?", token)
        if not match:
            continue
        sign, whole, fraction, exponent, unit = match.groups()
        value = abs(float(whole.replace(",", "") + (fraction or "") + (exponent or "")))
        step = 10.0 ** -(len(fraction) - 1 if fraction else 0) * (10.0 ** int(exponent[1:]) if exponent else 1)
        found.append((value, 0.5 * step * (1 + 1e-9), "points" if sign else unit or ""))
    return found


def _in(value: float, tolerance: float, unit: str, scope) -> bool:
    """Whether a printed figure is one of `scope`'s numbers (as printed: itself, in percent, bytes in MB or MiB), or
    for a multiple or a percentage the ratio of two of them (2.6x; a size's 26% of fp32's), for points the
    difference of two accuracies."""
    values = np.unique(np.array(_values(scope), dtype=float))
    if any(np.any(np.abs(values * scale - value) <= tolerance) for scale in (1.0, 100.0, 1e-6, 2.0 ** -20)):
        return True
    if unit not in ("x", "%", "points"):
        return False
    target, tol = (value / 100, tolerance / 100) if unit in ("%", "points") else (value, tolerance)
    positive = values[values > 0]
    if unit == "points":
        low, high = positive - target - tol, positive - target + tol
    else:
        low = positive / (target + tol)
        high = positive / (target - tol) if target > tol else np.full(positive.shape, np.inf)
    return bool(np.any(np.searchsorted(positive, high, "right") > np.searchsorted(positive, low, "left")))


class _Scopes:
    """Which part of the recorded run a printed line of one command is to be found in: a row of export's table in
    that variant's figures, a cell of bench's timings in that cell's, an engine's row in that engine's, predict's
    lines in what it printed."""

    def __init__(self, doc: dict):
        self.doc, self.cell, self.part = doc, (None, None), "timings"
        export = doc["export"]
        self.variants = {**export["pytorch"], **export["variants"]}
        self.engines = {engine["name"]: engine for engine in doc["bench"]["engines"]}

    def of(self, command: str, line: str):
        words = line.split()
        if command == "finetune":
            return self.doc["finetune"]
        if command == "export":
            row = self.variants.get(words[0]) if words else None
            return self.doc["export"] if row is None else {"row": row, "fp32": self.variants["fp32"]["size_bytes"]}
        if command == "bench":
            return self._bench(line, words)
        return self.doc.get("printed", {})

    def _bench(self, line: str, words: list[str]):
        found = re.match(r"\s*(\d+ tokens|natural)\s+(\d+)\s+(\S+)", line)
        if found:
            self.cell = (found.group(1), int(found.group(2)))
        if words and words[0] == "engine":
            self.part = "engines"
        engine = found.group(3) if found else words[0] if words else None
        if self.part == "engines" and engine in self.engines:
            return self.engines[engine]
        cells = [t for t in self.doc["bench"]["timings"] if t["engine"] == engine and
                 (t["inputs"], t["batch_size"]) == self.cell]
        if cells:
            return cells[0]
        return {key: value for key, value in self.doc["bench"].items() if key not in ("timings", "engines")}


def test_the_quick_start_shows_the_recorded_run():
    """Every figure the quick start's commands print (the console blocks' output lines) is in the recorded run's
    JSON where that line's figures are (a variant's row in its figures, a bench cell in its cell's), and the curl
    answer's predictions are those the recorded server gave."""
    section = re.search(r"^## Quick start.*?(?=^## )", README.read_text(encoding="utf-8"), re.S | re.M).group()
    doc = load(RECORDED)
    served = [json.loads(line) for line in doc.get("printed", {}).get("serve", []) if line.startswith("{")]
    assert served, f"{RECORDED} holds no answer of the server: record the demo run with benchmarks/demo_record.py"
    scopes, wrong, command = _Scopes(doc), [], None
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line.split()[2] if line.split()[1] == "bertdeploy" else line.split()[1]
                continue
            if line.startswith("{"):  # the curl answer
                if json.loads(line)["predictions"] != served[0]["predictions"]:
                    wrong.append(f"curl answer {line}: the recorded server answered {served[0]}")
                continue
            line = re.sub(r"\S*://\S*", " ", line)  # addresses
            scope = scopes.of(command, line) if command != "serve" else doc["printed"]["serve"]
            wrong += [f"{command}: '{line.strip()[:70]}': {value:g} is not in {RECORDED}" for value, tolerance, unit
                      in transcript_figures(line) if not _in(value, tolerance, unit, scope)]
    assert not wrong, "README quick start: its output should be the recorded demo run's (benchmarks/results/" \
                      f"{RECORDED}, benchmarks/demo_record.py); copy it from there:\n" + "\n".join(wrong)


def _cell(bench: dict, engine: str, batch: int, inputs: str = "128 tokens") -> dict:
    return next(t for t in bench["timings"] if (t["engine"], t["batch_size"], t["inputs"]) == (engine, batch, inputs))


# Every multiple (2.2x) of the README's Figures, with how its JSON gives it: two figures of two digits are too easy to
# find by chance among a result's numbers, so each is computed here from the record it comes from.
MULTIPLES = {
    ("optimize_topics.json", "56"): lambda d: d["chosen"]["32x128"]["speedup"],
    ("optimize_demo.json", "2.7"): lambda d: {round(cell["speedup"], 1) for cell in d["chosen"].values()} == {2.7}
    and d["chosen"]["32x128"]["speedup"],
    ("demo_e5_xeon.json", "1.47"): lambda d: _cell(d["bench"], "auto", 8)["speedup"],
    ("demo_e5_xeon.json", "3.9"): lambda d: _cell(d["bench"], "pytorch", 8)["p50_ms"]
    / _cell(d["bench"], "auto", 8)["p50_ms"],
    ("static_topics.json", "15"): lambda d: d["bulk_seconds"]["teacher"] / d["bulk_seconds"]["static"],
    ("demo_bench.json", "2.2"): lambda d: _cell(d, "auto", 8)["speedup"],
    ("predictor_speed.json", "12"): lambda d: d["ratios"]["bulk: pipeline / bertdeploy predict"],
    ("predictor_speed.json", "4.8"): lambda d: d["ratios"]["bulk: pipeline bf16 / bertdeploy predict"],
    ("predictor_speed.json", "3.9"): lambda d: d["ratios"]["bulk: optimum / bertdeploy predict"],
    ("predictor_speed.json", "4.6"): lambda d: d["ratios"]["single: pipeline / ours as loaded by default"],
    ("predictor_speed.json", "1.06"): lambda d: d["ratios"]["single: optimum / ours"],
    ("predictor_speed.json", "1.09"): lambda d: d["ratios"]["single: optimum / ours as loaded by default"],
}


def test_every_readme_multiple_is_computed_from_its_json():
    wrong = []
    for bullet, _ in figure_bullets():
        cited = CITED.findall(bullet)
        for figure, unit in figures(bullet):
            if unit != "x":
                continue
            sources = [name for name in cited if (name, figure) in MULTIPLES]
            if not sources:
                wrong.append(f"'{figure}x' in '{bullet[:50]}...': add it to MULTIPLES (tests/core/test_results.py) "
                             f"with how one of {cited} gives it")
                continue
            value = MULTIPLES[sources[0], figure](load(sources[0]))
            decimals = len(figure.split(".")[1]) if "." in figure else 0
            if value is False or round(value, decimals) != float(figure):
                wrong.append(f"'{figure}x' in '{bullet[:50]}...': {sources[0]} gives {value}")
    assert not wrong, "README Figures:\n" + "\n".join(wrong)
