"""Write docs/cli.md, the reference of every command, from their --help (tests/core/test_docs.py checks it is current).

    python scripts/cli_reference.py
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bertdeploy.cli import cli

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def reference() -> str:
    """The page: the group's --help, then each command's, as the terminal shows them at 100 columns."""
    runner = CliRunner()
    sections = ["# Command reference\n\nGenerated from `--help` by `python scripts/cli_reference.py`.\n"]
    for name in [None, *sorted(cli.commands)]:
        args = ["--help"] if name is None else [name, "--help"]
        result = runner.invoke(cli, args, prog_name="bertdeploy", terminal_width=100)
        if result.exit_code != 0:
            raise SystemExit(f"bertdeploy {' '.join(args)} failed: {result.output}")
        title = "bertdeploy" if name is None else f"bertdeploy {name}"
        sections.append(f"## `{title}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    PAGE.write_text(reference(), encoding="utf-8")
    print(f"wrote {PAGE}")
