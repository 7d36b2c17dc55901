"""`curvax` command line. Each sub-command lives in its own module `curvax.cli.<name>` exposing
`add_parser(subparsers)` (which sets `func=run` on its parser) and `run(args) -> int`; a command
parses its arguments, builds its config and calls the library (`curvax.finetune.pft.run`,
`curvax.thermal.workflow.run`, ...). Precision is decided here, once: `--x64` (or
`CURVAX_X64=1`) enables float64 for every command (`curvax.precision`); XLA:CPU runs with
`curvax.compilation.XLA_CPU_FLAGS` (set before JAX starts its backend)."""
from __future__ import annotations

import argparse
import sys

from curvax import compilation, parallel, precision
from curvax.cli import finetune, gk, kappa, phonons, relax, relax_tune, screen

COMMANDS = (relax, relax_tune, phonons, screen, kappa, gk, finetune)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="curvax", description="Exact derivatives of machine-learned interatomic potentials: phonons, "
                                   "thermal conductivity, relaxations, and fine-tuning on them.")
    parser.add_argument("--x64", action="store_true",
                        help="compute in float64 (default float32; also CURVAX_X64=1)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run first (jax.distributed.initialize: SLURM or "
                             "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID); see README")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    args = parser.parse_args(argv)
    compilation.set_xla_cpu_flags()
    args.x64 = bool(args.x64 or precision.x64_from_environment())
    precision.enable_x64(args.x64)
    compilation.enable_caches()  # $CURVAX_JAX_CACHE: compiled and traced programs kept across runs
    if args.distributed:
        parallel.initialize_distributed()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"curvax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
