"""`curvax` command line. Each sub-command lives in its own module `curvax.cli.<name>` exposing
`add_parser(subparsers)` (which sets `func=run` on its parser) and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

# one line per sub-command module
COMMANDS = (
    "relax",
    "relax_tune",
    "phonons",
    "kappa",
    "gk",
    "finetune",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="curvax", description=__doc__.splitlines()[0])
    parser.add_argument("--x64", action="store_true", help="compute in float64")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"curvax.cli.{name}").add_parser(sub)
    args = parser.parse_args(argv)
    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"curvax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
