"""``bit``: one entry point; each sub-command lives in its own module with ``register(subparsers)`` and imports
PyTorch only in its ``run()``, so ``--help``, ``--version`` and argument errors answer at once."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import BitError, Interrupted, UsageError, file_error_line

# Sub-command modules, in the order ``bit --help`` lists them.
COMMANDS = ["models", "recipes", "finetune", "fewshot", "distill", "train", "evaluate", "predict", "embed", "convert",
            "export", "demo"]


class BitArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a ``UsageError``) instead of a usage block and an exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    """The ``bit`` parser with every sub-command (sub-parsers share its one-line errors)."""
    parser = BitArgumentParser(prog="bit", description="Big Transfer (BiT): pre-trained ResNetV2 "
                               "models, the BiT-HyperRule and few-shot transfer.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"bit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (a library's multi-line text is joined with '; ')."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run ``bit``; a user error prints one line and returns 2 (tracebacks only with ``--debug``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = False  # a command line that does not parse is one line even with --debug
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version print and stop
            return e.code if isinstance(e.code, int) else 0
        debug = args.debug
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(str(e))
        return e.code
    except BitError as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`bit models | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if debug or e.filename is None:
            raise
        print(f"error: {file_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
