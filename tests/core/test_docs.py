"""The docs hold: the README's quick start runs as shown (on the tiny model), its Python snippet runs, the
command reference is the commands' current --help, and every relative link points at a file."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import make_rows, ready, write_csv

from bertdeploy.builder.reference import computes_bf16

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHECKPOINT = "intfloat/multilingual-e5-small"  # the README's; the tiny model stands in for it


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as (command, the output lines shown after it) pairs."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def _shown_words(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.strip()]


def test_the_readme_quick_start_runs_as_shown(tiny_model_dir, tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(160, seed=1))
    write_csv(tmp_path / "test.csv", make_rows(40, seed=2))
    steps = [step for block in _console_blocks(_section(README.read_text(), "Quick start")) for step in block]
    commands = [args for args, _ in steps]
    assert [shlex.split(c)[1] for c in commands if c.startswith("bertdeploy")] == \
        ["finetune", "export", "bench", "predict", "serve"]
    # the README's machine computes bf16: there export and bench also time PyTorch under bf16 autocast
    host_only = set() if computes_bf16() else {"pytorch-bf16"}
    server = None
    try:
        for command, shown in steps:
            args = shlex.split(command.replace(CHECKPOINT, str(tiny_model_dir)))
            if args[:2] == ["bertdeploy", "serve"]:
                server, port = _serve(args, tmp_path)
                continue
            if args[0] == "curl":
                _curl(args, port, shown)
                continue
            done = subprocess.run([sys.executable, "-m", "bertdeploy", *args[1:]], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
            printed = {line.split()[0] for line in (done.stdout + done.stderr).splitlines() if line.strip()}
            missing = [word for word in _shown_words(shown) if word not in printed and word not in host_only]
            assert not missing, f"{command}: the README shows lines starting {missing}, the command printed:\n" \
                                f"{done.stdout}{done.stderr[-2000:]}"
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "model-onnx" / "manifest.json").is_file()

    snippet = re.search(r"```python\n(.*?)```", _section(README.read_text(), "In Python"), re.S).group(1)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] in (
        [a, b] for a in ("negative", "positive") for b in ("negative", "positive"))


def _serve(args: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    """The README's serve command on a free port (its --port replaced by 0), once ready."""
    if "--port" in args:
        args[args.index("--port") + 1] = "0"
    process = subprocess.Popen([sys.executable, "-m", "bertdeploy", *args[1:]], cwd=cwd, stderr=subprocess.PIPE,
                               text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + 120
    while not (found := re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", "".join(log))):
        assert process.poll() is None and time.monotonic() < deadline, "".join(log)
        time.sleep(0.05)
    port = int(found.group(1))
    while not ready(f"http://127.0.0.1:{port}"):
        assert process.poll() is None and time.monotonic() < deadline, "".join(log)
        time.sleep(0.05)
    return process, port


def _curl(args: list[str], port: int, shown: list[str]) -> None:
    """The README's curl line against the served port: same request, an answer of the shape shown."""
    url = next(a for a in args if "localhost:" in a).replace("localhost:8000", f"127.0.0.1:{port}")
    body = args[args.index("-d") + 1]
    headers = dict(h.split(": ", 1) for i, h in enumerate(args) if i and args[i - 1] == "-H")
    answer = httpx.post(url if url.startswith("http") else f"http://{url}", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    expected = json.loads(shown[0])
    got = answer.json()
    assert set(got) == set(expected) and [set(p) for p in got["predictions"]] == \
        [set(p) for p in expected["predictions"]]


def test_the_command_reference_is_current():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == module.reference(), \
        "docs/cli.md is out of date: run python scripts/cli_reference.py"


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"],
                         ids=lambda p: p.name)
def test_relative_links_point_at_files(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
    broken = [link for link in links if "://" not in link and not (page.parent / link).exists()]
    assert not broken, f"{page.name}: {broken}"


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every `bertdeploy ...` command line in a code block of the README and docs/."""
    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name == "cli.md":
            continue
        for block in re.findall(r"```(?:console|bash|)\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            joined = re.sub(r"\n[ \t]+(?=\S)", " ", block.replace("\\\n", " "))  # continuation lines
            for line in joined.splitlines():
                line = line.removeprefix("$ ").strip()
                if line.startswith("bertdeploy ") or " -m bertdeploy " in line:
                    command = line if line.startswith("bertdeploy ") else line.split(" | ")[-1]  # after a pipe
                    words = shlex.split(command.split("  #")[0], posix=True)
                    start = words.index("bertdeploy") if "bertdeploy" in words else words.index("-m") + 1
                    found.append((page.name, words[start + 1:]))
    return found


def test_every_documented_command_uses_options_that_exist():
    from bertdeploy.cli import cli

    commands = _documented_commands()
    assert len(commands) >= 15
    for page, args in commands:
        args = [a for a in args if a not in ("-q", "-v")]
        command = cli.commands.get(args[0]) if args else None
        assert command is not None, f"{page}: bertdeploy {' '.join(args)}"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        options = [o.split("=")[0] for a in args[1:] for o in a.strip("[]").split("|") if o.startswith("--")]
        unknown = [o for o in options if o not in known]
        assert not unknown, f"{page}: bertdeploy {' '.join(args)}: no option {unknown}"


# -- anchors, option synopses, variant names (issue 40) ---------------------------------------------------------

PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]


def _outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line of a markdown page outside its ``` fenced blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercased, every character but a letter, digit, space, hyphen or
    underscore dropped (backticks, colons, dots, parentheses, apostrophes), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors a page has: its headings' slugs (a repeated heading's with -1, -2, ...) and <a id/name>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = page.read_text(encoding="utf-8")
    for _, line in _outside_code(text):
        if heading := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = github_slug(heading.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    found.update(re.findall(r"<a\s[^>]*?(?:id|name)=[\"']?([^\"'\s>]+)", text))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_anchors_name_headings(page):
    broken = []
    for number, line in _outside_code(page.read_text(encoding="utf-8")):
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]*)\)", line):
            if "://" in target or (target and not target.endswith(".md")):
                continue  # another site, or a file that is no markdown page
            linked = (page.parent / target).resolve() if target else page
            if linked.is_file() and anchor not in anchors(linked):
                broken.append(f"{page.name}:{number}: ({target}#{anchor})")
    assert not broken, "links to anchors that name no heading (GitHub's slug of the heading, or an <a id>): " \
                       "fix the anchor or the heading:\n" + "\n".join(broken)


SYNOPSIS_COMMANDS = ["finetune", "export", "distill", "optimize", "bench", "predict", "serve"]


@pytest.mark.parametrize("command", SYNOPSIS_COMMANDS)
def test_each_command_page_opens_with_its_whole_synopsis(command):
    from bertdeploy.cli import cli

    page = ROOT / "docs" / f"{command}.md"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks and blocks[0].startswith(f"bertdeploy {command}"), \
        f"docs/{command}.md: its first code block should be the synopsis, starting `bertdeploy {command}`"
    shown = set(re.findall(r"--[a-z0-9][a-z0-9-]*", blocks[0]))
    options = {opt for param in cli.commands[command].params for opt in (*param.opts, *param.secondary_opts)
               if opt.startswith("--")} - {"--help"}
    assert shown == options, f"docs/{command}.md: the synopsis lacks {sorted(options - shown)} and shows unknown " \
                             f"{sorted(shown - options)}: update the synopsis at the top of docs/{command}.md"


def producible_variants() -> set[str]:
    """Every variant name export can write. No one place in bertdeploy lists them: export.py builds them from
    kinds.KINDS (int8, int8-static, fp16, int8-ov, fp32-ov) and optimize.LEVELS (O1-O4) as it goes: fp32, each
    level, each kind, and '<level>-<kind>' for the kinds built from a fused graph too (fused_too), at every level
    but the fp16 one (export.py's `if kind.fused_too and level and not LEVELS[level].fp16`)."""
    from bertdeploy.builder.kinds import KINDS
    from bertdeploy.builder.optimize import LEVELS

    fused = {f"{level}-{name}" for name, kind in KINDS.items() if kind.fused_too
             for level, settings in LEVELS.items() if not settings.fp16}
    return {"fp32", *LEVELS, *KINDS, *fused}


# what a variant's name looks like: a level, or a precision with a suffix, built from a level or not; bf16 is no
# variant but an OpenVINO precision and PyTorch's autocast
VARIANT_LIKE = re.compile(r"O\d+|(?:O\d+-)?(?:fp|int|uint)\d+(?:-[a-z0-9]+)*")


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_variant_the_docs_name_is_one_export_builds(page):
    variants = producible_variants()
    unknown = [f"{page.name}:{number}: `{token}`" for number, line in _outside_code(page.read_text(encoding="utf-8"))
               for token in re.findall(r"`([^`\s]+)`", line) if VARIANT_LIKE.fullmatch(token) and token not in variants]
    assert not unknown, f"no variant of these names exists (export builds {sorted(variants)}): " + ", ".join(unknown)


def test_the_artifact_format_names_every_variant():
    text = (ROOT / "docs" / "artifacts.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([^`\s]+)`", text))
    # a range such as `O1`..`O4` or `O1-int8`..`O3-int8` names the levels between
    for first, suffix, last in re.findall(r"`O(\d+)((?:-[a-z0-9-]+)?)`\s*\.\.\s*`O(\d+)\2`", text):
        named.update(f"O{level}{suffix}" for level in range(int(first), int(last) + 1))
    missing = sorted(producible_variants() - named)
    assert not missing, f"docs/artifacts.md names no variant {missing}: add them to the list of variants"
