"""Command-line entry point. Sub-commands are registered here as the features land."""

from __future__ import annotations

import argparse

COMMANDS: dict[str, str] = {}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-fa", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS) or ["help"])
    args, _ = parser.parse_known_args(argv)
    parser.print_help()
    return 0 if args.command == "help" else 2
