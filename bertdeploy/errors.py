"""Typed errors for user mistakes: the CLI prints their message in one line and exits with code 2.

Anything that is not a `BertdeployError` is a bug and keeps its traceback. `import_extra` imports
an optional dependency, or says in one such error which extra of the package brings it; `first_line`
puts a third-party error into such a message.
"""

import importlib


class BertdeployError(Exception):
    """A problem the user can fix: bad input, a wrong path, a refused output directory."""


def check_options(checks: list[tuple[bool, str]]) -> None:
    """Raise a BertdeployError with the message of the first (condition, message) check that fails."""
    for ok, message in checks:
        if not ok:
            raise BertdeployError(message)


class DataError(BertdeployError):
    """A data file is missing, unreadable or inconsistent."""


class ModelError(BertdeployError):
    """A model path or id does not hold a usable checkpoint."""


class OutputDirError(BertdeployError):
    """The output directory is not in a state the command may write to."""


def first_line(error: Exception) -> str:
    """A third-party error in one line: its first line (skipping OpenVINO's "Exception from <file>" lines),
    and the line saying what is not supported where there is one."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.startswith("Exception from")]
    unsupported = next((line for line in lines[1:] if "support" in line), None)
    return " ".join(filter(None, [lines[0] if lines else type(error).__name__, unsupported]))


def extra_hint(extra: str) -> str:
    """How to install bertdeploy's `extra`, in the words of every message that names one."""
    return f"install bertdeploy's '{extra}' extra (pip install '.[{extra}]' in its checkout)"


def import_extra(module: str, extra: str, needed_for: str, what: str | None = None):
    """`module`, imported; when it is missing, a BertdeployError: '<needed_for> needs <what>: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BertdeployError(f"{needed_for} needs {what or module}: {extra_hint(extra)}") from None


def require_training(command: str, *modules: str) -> None:
    """A BertdeployError naming the `train` extra when a module of the training stack that `command`
    (finetune, export, bench) needs is missing (default: torch and transformers). The runtime install has none."""
    for module in modules or ("torch", "transformers"):
        import_extra(module, "train", command, "the training stack (PyTorch, transformers, ONNX)")
