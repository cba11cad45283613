"""Which candidates `bertdeploy optimize` tries, in which order, and which engine it keeps: no models, no timing.

The candidates by default: the teacher's own variants (an export, no training), a static student (minutes), and
layer-cut students at a few depths for the teacher's size, shallowest first (each an hour on a CPU for a MiniLM).
The choice, per cell (batch size x sequence length): the fastest engine whose score stays within the bound of the
teacher's, by the same rule as export; where none does, the teacher's best variant, said as such. The export kept
is the candidate chosen in most cells (ties: the one chosen at the largest batch).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bertdeploy.errors import BertdeployError

TEACHER, STATIC = "teacher", "static"


@dataclass(frozen=True)
class Candidate:
    name: str  # teacher, static, layers-N
    layers: int | None = None  # a layer-cut student's depth

    @property
    def static(self) -> bool:
        return self.name == STATIC


def default_candidates(depth: int) -> list[Candidate]:
    """The teacher, a static student, then layer-cut students of about a half and a third of its `depth` layers
    (at least 1, fewer than the teacher's), shallowest first: cheapest first."""
    depths = sorted({d for d in (depth // 3, depth // 2) if 1 <= d < depth})
    return [Candidate(TEACHER), Candidate(STATIC), *(Candidate(f"layers-{d}", d) for d in depths)]


def parse_candidates(text: str, depth: int) -> list[Candidate]:
    """`--candidates teacher,static,layers-3`: the names given, in cost order; BertdeployError naming a wrong one."""
    chosen = {}
    for name in (part.strip() for part in text.split(",") if part.strip()):
        layers = int(name[7:]) if name.startswith("layers-") and name[7:].isdigit() else None
        if name in (TEACHER, STATIC):
            chosen[name] = Candidate(name)
        elif layers is not None and 1 <= layers < depth:
            chosen[f"layers-{layers}"] = Candidate(f"layers-{layers}", layers)
        else:
            cut = f"layers-N (N from 1 to {depth - 1})" if depth > 1 else "(the teacher has no layers to cut)"
            raise BertdeployError(f"--candidates: {name!r} is none of teacher, static, {cut}")
    order = {TEACHER: 0, STATIC: 1}
    return sorted(chosen.values(), key=lambda c: (order.get(c.name, 2), c.layers or 0))


def choose(engines: list[dict], cells: list[str]) -> dict[str, dict]:
    """Per cell: the fastest engine (a dict with candidate, variant, score, `within` the bound, p50_ms by cell)
    within the bound; where none is, the teacher's most accurate variant, `within` False."""
    teacher = [e for e in engines if e["candidate"] == TEACHER and e["score"] is not None]
    chosen = {}
    for cell in cells:
        timed = [e for e in engines if e["p50_ms"].get(cell) is not None]
        within = [e for e in timed if e["within"]]
        if within:
            best = min(within, key=lambda e: e["p50_ms"][cell])
        else:
            best = max((e for e in teacher if e["p50_ms"].get(cell) is not None),
                       key=lambda e: (e["score"], -e["p50_ms"][cell]))
        baseline = [e["p50_ms"][cell] for e in teacher if e["within"] and e["p50_ms"].get(cell)]
        chosen[cell] = {"candidate": best["candidate"], "variant": best["variant"], "p50_ms": best["p50_ms"][cell],
                        "score": best["score"], "within": best["within"],
                        "speedup": min(baseline) / best["p50_ms"][cell] if baseline else None}
    return chosen


def kept_candidate(chosen: dict[str, dict], cells: list[str]) -> str:
    """The candidate whose export is kept: chosen in most cells; ties go to the one chosen at the last (largest)
    cell among them."""
    counts = Counter(choice["candidate"] for choice in chosen.values())
    top = max(counts.values())
    return next(chosen[cell]["candidate"] for cell in reversed(cells) if counts[chosen[cell]["candidate"]] == top)
