"""How every command reports bad input: one line naming the file or value, exit status 2.

Library code raises `ValueError` / `FileNotFoundError` (or any `OSError`) with a message that names
the file and what is wrong; `run_command` turns those into `lightning-fa <command>: <message>` on
stderr and exit status 2, and Ctrl-C into status 130. `--debug` anywhere on the command line
shows the full traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

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
