"""`bertdeploy optimize`'s report: `report.json` (every figure the choice used) and `report.html`, drawn from it.

The HTML is one self-contained file, no script and nothing fetched: per cell (batch size x sequence length, or
real texts at natural lengths) an inline SVG of accuracy against p50 latency (log scale) with every engine of every
candidate, the accuracy floor (the bound), the Pareto front and the choice marked; the table behind the plots; why
each rejected candidate was rejected; the machine.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from bertdeploy.artifacts import atomic_file
from bertdeploy.benchmark.cases import NATURAL

WIDTH, HEIGHT, MARGIN, TOP = 560, 300, 56, 12  # MARGIN: left, right and bottom
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
CHOSEN = "#d62728"  # the chosen engine's ring, and nothing else: a check can look for this colour


def cell_key(batch_size: int, seq_length: int) -> str:
    return f"{batch_size}x{seq_length}"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the points no other point beats on both: faster (lower x) and more accurate (higher y),
    in order of x."""
    front, best = [], -math.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def render_html(report: dict) -> str:
    """The HTML page of a report (the dict written as report.json)."""
    bound = report["bound"]
    candidates = list(dict.fromkeys(e["candidate"] for e in report["engines"]))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(candidates)}
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>bertdeploy optimize: "
             f"{_e(report['model'])}</title><style>{_STYLE}</style></head><body>",
             f"<h1>bertdeploy optimize</h1><p class='model'>{_e(report['model'])}</p>", _summary(report)]
    parts.append("<div class='legend'>" + "".join(
        f"<span><svg width='12' height='12'><circle cx='6' cy='6' r='5' fill='{colours[c]}'/></svg> {_e(c)}</span>"
        for c in candidates) + f"<span><svg width='14' height='14'><circle cx='7' cy='7' r='6' fill='none' "
        f"stroke='{CHOSEN}' stroke-width='2'/></svg> chosen</span><span>hollow: outside the bound</span></div>")
    for cell in report["cells"]:
        parts.append(_plot(report, cell_key(cell["batch_size"], cell["seq_length"]), colours, bound["floor"]))
    parts += [_table(report), _rejected(report), _machine(report), "</body></html>"]
    return "\n".join(parts)


def write(report: dict, page: str, directory: Path) -> None:
    """`directory`/report.json and report.html (`page`, from render_html), each written whole or not at all."""
    for name, text in (("report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n"),
                       ("report.html", page)):
        with atomic_file(directory / name) as temporary:
            temporary.write_text(text, encoding="utf-8")


def summary_lines(report: dict) -> list[str]:
    """The bound, then the choice per cell, in words: what the command prints and the page's summary."""
    bound, lines = report["bound"], []
    lines.append(f"bound: {bound['metric']} at least {bound['floor']:.4f} (the teacher's {bound['reference']:.4f} "
                 f"less {bound['max_accuracy_drop']:g} points) on {report['eval_texts']} held-out texts")
    for key, choice in report["chosen"].items():
        speedup = f", {choice['speedup']:.1f}x the teacher's best variant" if choice.get("speedup") else ""
        kept = "" if choice["within"] else " (nothing kept the bound: the teacher's best variant)"
        lines.append(f"{key}: {choice['candidate']} / {choice['variant']}, {choice['p50_ms']:.2f} ms p50{speedup}, "
                     f"{bound['metric']} {choice['score']:.4f}{kept}")
    return lines


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _summary(report: dict) -> str:
    bound, *cells = summary_lines(report)
    shipped = report["export"]
    rows = "".join(f"<li class='{'' if c['within'] else 'warn'}'>{_e(line)}</li>"
                   for line, c in zip(cells, report["chosen"].values(), strict=True))
    return (f"<p>{_e(bound[0].upper() + bound[1:])}.</p><ul class='choice'>{rows}</ul>"
            f"<p>Exported: {_e(shipped['candidate'])}, in {_e(shipped['path'])}</p>")


def _plot(report: dict, key: str, colours: dict, floor: float) -> str:
    engines = [e for e in report["engines"] if e["p50_ms"].get(key) is not None and e["score"] is not None]
    if not engines:
        return f"<h2>{_e(key)}</h2><p>no timings</p>"
    xs = [math.log10(e["p50_ms"][key]) for e in engines]
    ys = [e["score"] for e in engines]
    x0, x1 = math.floor(min(xs) * 4) / 4 - 0.05, math.ceil(max(xs) * 4) / 4 + 0.05
    y0 = min(*ys, max(floor, min(ys) - 0.05)) - 0.01  # a far-off floor (a loose bound) does not squash the points
    y1 = max(*ys, floor) + 0.01

    def sx(x: float) -> float:
        return MARGIN + (x - x0) / (x1 - x0) * (WIDTH - 2 * MARGIN)

    def sy(y: float) -> float:
        return HEIGHT - MARGIN + (y0 - y) / (y1 - y0) * (HEIGHT - MARGIN - TOP)

    batch, length = key.split("x")
    shape = "at their natural lengths" if length == NATURAL else f"x {_e(length)} tokens"
    out = [f"<h2>Batches of {_e(batch)} texts {shape}</h2>",
           f"<svg class='plot' id='plot-{_e(key)}' width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' "
           "xmlns='http://www.w3.org/2000/svg' role='img'>",
           f"<rect x='{MARGIN}' y='{TOP}' width='{WIDTH - 2 * MARGIN}' height='{HEIGHT - MARGIN - TOP}' "
           "fill='#fafafa' stroke='#999'/>"]
    for decade in range(math.floor(x0), math.ceil(x1) + 1):
        for step in (1, 2, 5):
            x = decade + math.log10(step)
            if x0 <= x <= x1:
                out.append(f"<line x1='{sx(x):.1f}' y1='{HEIGHT - MARGIN}' x2='{sx(x):.1f}' y2='{TOP}' "
                           f"stroke='#e3e3e3'/><text x='{sx(x):.1f}' y='{HEIGHT - MARGIN + 16}' "
                           f"text-anchor='middle'>{10 ** x:g}</text>")
    for y in _ticks(y0, y1):
        out.append(f"<text x='{MARGIN - 6}' y='{sy(y) + 4:.1f}' text-anchor='end'>{y:.3f}</text>")
    out.append(f"<text x='{WIDTH / 2}' y='{HEIGHT - 12}' text-anchor='middle'>p50 latency, ms (log)</text>"
               f"<text x='14' y='{HEIGHT / 2}' transform='rotate(-90 14 {HEIGHT / 2})' text-anchor='middle'>"
               f"{_e(report['bound']['metric'])}</text>")
    if floor >= y0:
        out.append(f"<line x1='{MARGIN}' y1='{sy(floor):.1f}' x2='{WIDTH - MARGIN}' y2='{sy(floor):.1f}' "
                   f"stroke='#555' stroke-dasharray='5 4'/><text x='{WIDTH - MARGIN - 4}' y='{sy(floor) - 5:.1f}' "
                   "text-anchor='end'>bound</text>")
    front = pareto(list(zip(xs, ys, strict=True)))
    out.append("<polyline class='front' fill='none' stroke='#444' stroke-width='1.5' points='" + " ".join(
        f"{sx(xs[i]):.1f},{sy(ys[i]):.1f}" for i in front) + "'/>")
    chosen = report["chosen"].get(key, {})
    for e, x, y in zip(engines, xs, ys, strict=True):
        colour, title = colours[e["candidate"]], f"{e['candidate']} / {e['variant']}: {e['p50_ms'][key]:.2f} ms, " \
                                                  f"{y:.4f}"
        fill = colour if e["within"] else "white"
        out.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='5' fill='{fill}' stroke='{colour}' "
                   f"stroke-width='1.5'><title>{_e(title)}</title></circle>")
        if (e["candidate"], e["variant"]) == (chosen.get("candidate"), chosen.get("variant")):
            out.append(f"<circle class='chosen' cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='10' fill='none' "
                       f"stroke='{CHOSEN}' stroke-width='3'/><text x='{sx(x) + 13:.1f}' y='{sy(y) - 9:.1f}'>"
                       f"{_e(e['candidate'])} / {_e(e['variant'])}</text>")
    out.append("</svg>")
    return "\n".join(out)


def _ticks(low: float, high: float) -> list[float]:
    step = 10 ** math.floor(math.log10((high - low) / 4)) if high > low else 0.01
    step *= 5 if (high - low) / step > 20 else 2 if (high - low) / step > 8 else 1
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _table(report: dict) -> str:
    keys = [cell_key(c["batch_size"], c["seq_length"]) for c in report["cells"]]
    head = "".join(f"<th>p50 {_e(k)} ms</th>" for k in keys)
    rows = []
    for e in report["engines"]:
        accuracy = "" if e["score"] is None else f"{e['score']:.4f}"
        cells = "".join(f"<td>{'' if e['p50_ms'].get(k) is None else format(e['p50_ms'][k], '.2f')}</td>"
                        for k in keys)
        rows.append(f"<tr class='{'' if e['within'] else 'out'}'><td>{_e(e['candidate'])}</td><td>{_e(e['variant'])}"
                    f"</td><td>{accuracy}</td><td>{'yes' if e['within'] else 'no'}</td>{cells}"
                    f"<td>{e.get('size_bytes', 0) / 2**20:.1f}</td></tr>")
    return (f"<h2>Every engine</h2><table><tr><th>candidate</th><th>variant</th><th>"
            f"{_e(report['bound']['metric'])}</th><th>within the bound</th>{head}<th>MB</th></tr>{''.join(rows)}"
            "</table>")


def _rejected(report: dict) -> str:
    rows = "".join(f"<li><b>{_e(r['candidate'])}</b> ({_e(r['stage'])}): {_e(r['reason'])}</li>"
                   for r in report.get("rejected", []))
    return f"<h2>Rejected candidates</h2><ul>{rows or '<li>none</li>'}</ul>"


def _machine(report: dict) -> str:
    machine = report["machine"]
    flags = ", ".join(machine.get("cpu_flags", []))
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    return (f"<h2>Machine</h2><p>{_e(machine.get('cpu'))}; {_e(machine.get('usable_cpus'))} usable CPUs, "
            f"{_e(report.get('threads'))} threads; {_e(machine.get('memory_gb'))} GiB; {_e(report.get('runs'))} timed "
            f"calls per engine and cell; flags: {_e(flags)}</p><p>{_e(versions)}</p>")


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{margin-bottom:0}.model{color:#555;margin-top:0}.warn{color:#b00}
.legend span{margin-right:1.2em;white-space:nowrap}.plot text{font-size:11px;fill:#333}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,td:nth-child(2){text-align:left}tr.out td{color:#999}"""
