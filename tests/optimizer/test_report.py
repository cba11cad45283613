"""`bertdeploy optimize`'s report: the Pareto front, and report.html opened in a real headless Chromium (Debian's
package) with its plots drawn: the chosen engine's ring is on the screen in the legend and once per cell."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bertdeploy.optimizer import report

ENGINES = [
    {"candidate": "teacher", "variant": "fp32", "score": 0.95, "within": True, "size_bytes": 90e6,
     "p50_ms": {"1x128": 6.0, "32x128": 150.0}},
    {"candidate": "teacher", "variant": "int8", "score": 0.948, "within": True, "size_bytes": 23e6,
     "p50_ms": {"1x128": 3.0, "32x128": 70.0}},
    {"candidate": "layers-3", "variant": "int8", "score": 0.943, "within": True, "size_bytes": 15e6,
     "p50_ms": {"1x128": 1.6, "32x128": 35.0}},
    {"candidate": "static", "variant": "fp32", "score": 0.93, "within": False, "size_bytes": 8e6,
     "p50_ms": {"1x128": 0.05, "32x128": 0.4}},
]
REPORT = {"model": "runs/topics/<model>", "eval_texts": 500,
          "bound": {"metric": "accuracy", "reference": 0.95, "max_accuracy_drop": 1.0, "floor": 0.94},
          "cells": [{"batch_size": 1, "seq_length": 128}, {"batch_size": 32, "seq_length": 128}],
          "engines": ENGINES,
          "chosen": {key: {"candidate": "layers-3", "variant": "int8", "p50_ms": ENGINES[2]["p50_ms"][key],
                           "score": 0.943, "within": True, "speedup": 2.0} for key in ("1x128", "32x128")},
          "rejected": [{"candidate": "layers-2", "stage": "distill", "reason": "3.1 points below its teacher"}],
          "export": {"candidate": "layers-3", "path": "out/model"}, "threads": 2, "runs": 30,
          "machine": {"cpu": "a CPU", "cpu_flags": ["avx2"], "usable_cpus": 2, "memory_gb": 23.6,
                      "versions": {"onnxruntime": "1.0"}}}


def test_the_pareto_front_keeps_what_nothing_beats_on_both():
    points = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (2.5, 0.96)]
    assert report.pareto(points) == [4, 0, 1, 5]


def test_the_report_is_one_file_with_nothing_fetched(tmp_path):
    report.write(REPORT, report.render_html(REPORT), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "report.json").read_text()) == REPORT
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and page.count("class='chosen'") == 2 and "&lt;model&gt;" in page
    assert "onnxruntime 1.0" in page and "avx2" in page  # the machine and the library versions


def test_the_summary_says_when_nothing_kept_the_bound():
    outside = {**REPORT, "chosen": {"1x128": {"candidate": "teacher", "variant": "fp32", "p50_ms": 6.0,
                                              "score": 0.95, "within": False, "speedup": None}}}
    bound, cell = report.summary_lines(outside)
    assert bound.startswith("bound: accuracy at least 0.9400 (the teacher's 0.9500 less 1 points) on 500")
    assert cell == "1x128: teacher / fp32, 6.00 ms p50, accuracy 0.9500 (nothing kept the bound: the teacher's " \
                   "best variant)"
    assert "class='warn'" in report.render_html(outside)


def test_the_report_renders_in_a_headless_browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium here (Debian's package: apt-get install chromium)")
    image = pytest.importorskip("PIL.Image", reason="Pillow (matplotlib's, the plot extra) reads the screenshot")
    report.write(REPORT, report.render_html(REPORT), tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1800", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = image.open(shot).convert("RGB")
    red = tuple(int(report.CHOSEN[i:i + 2], 16) for i in (1, 3, 5))
    rows = sorted({y for (x, y) in _where(pixels, red)})
    assert rows, "the chosen engine's ring is not on the screen: the plots were not drawn"
    bands = [rows[0]] + [b for a, b in zip(rows, rows[1:], strict=False) if b - a > 40]
    assert len(bands) == 1 + len(REPORT["cells"]), f"the legend's ring, then one per cell's plot: rows {bands}"


def _where(pixels, colour, tolerance: int = 12):
    width, height = pixels.size
    data = pixels.load()
    return [(x, y) for y in range(0, height, 2) for x in range(0, width, 2)
            if all(abs(a - b) <= tolerance for a, b in zip(data[x, y], colour, strict=True))]
