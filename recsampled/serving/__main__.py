"""``python -m recsampled.serving --artifacts DIR [...]``: the same as ``recsampled serve``."""

from __future__ import annotations

import argparse
import sys

from recsampled.serving.cli import SERVE_HELP, add_serve_arguments, serve_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsampled.serving", description=SERVE_HELP)
    add_serve_arguments(parser)
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
