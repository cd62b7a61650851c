"""``bit``: one entry point; each sub-command lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import BitError

# Sub-command modules, in the order ``bit --help`` lists them.
COMMANDS = ["models", "recipes", "finetune", "fewshot", "train", "evaluate", "predict", "convert", "export", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bit", description="Big Transfer (BiT): pre-trained ResNetV2 "
                                     "models, the BiT-HyperRule and few-shot transfer.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue  # command not available in this build
            raise
        module.register(sub)
    return parser


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (a library's multi-line text is joined with '; ')."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run ``bit``; a user error prints one line and returns 2 (tracebacks only with ``--debug``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BitError as e:
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
