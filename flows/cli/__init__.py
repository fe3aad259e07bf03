"""The `tokenmill` command. Each module in this package adds subcommands with
`register(subparsers)`; modules are discovered, so a new command is a new file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from flows.automations import default_heartbeat_env
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


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line that names the field: `runner.workers: Input should be ...`."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or exc.title
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"


def main(argv: list[str] | None = None) -> int:
    default_heartbeat_env()  # before any command imports Prefect
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        print(f"tokenmill {args.command}: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    except (CommandError, StorageError, BotoCoreError, ClientError, FileNotFoundError, ValueError) as exc:
        print(f"tokenmill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokenmill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
