"""The `tokenmill` command. Each module in this package adds subcommands with
`register(subparsers)`; modules are discovered, so a new command is a new file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.storage import StorageError


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenmill", description="Web crawl to trained language model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, StorageError, BotoCoreError, ClientError, FileNotFoundError, ValueError) as exc:
        print(f"tokenmill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokenmill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
