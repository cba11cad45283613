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
