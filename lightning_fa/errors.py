"""How every command reports bad input: one line naming the file or value, exit status 2.

Library code raises `ValueError` / `FileNotFoundError` (or any `OSError`) with a message that names
the file and what is wrong; `run_command` turns those into `lightning-fa <command>: <message>` on
stderr and exit status 2, and Ctrl-C into status 130. `--debug` anywhere on the command line
shows the full traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

USAGE_ERROR = 2
INTERRUPTED = 130
DEBUG_FLAG = "--debug"

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (multi-line messages joined with '; ')."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def run_command(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run `body(argv)` (argv without `--debug`) and map user errors to one line and exit 2."""
    argv = list(argv)
    debug = DEBUG_FLAG in argv
    if debug:
        argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return int(body(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"{prog}: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR


def innermost_cause(error: BaseException) -> BaseException:
    """The exception at the bottom of `error`'s chain (jsonargparse wraps the constructor's
    ValueError in its own)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def describe_error(error: BaseException) -> str:
    """One line naming the innermost cause and its type."""
    error = innermost_cause(error)
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"


def load_yaml_file(path: str | Path, what: str) -> Any:
    """The YAML document in `path`; a missing, non-text or malformed file is named in one line
    (`what`: "config file", "sweep file", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text (UTF-8) {what} ({error.reason})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"{path}:{where}: not valid YAML ({problem})") from error
