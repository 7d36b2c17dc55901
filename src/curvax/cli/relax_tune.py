"""`curvax relax-tune CONFIG.yaml`: fine-tune a potential so that its own relaxations end in the
DFT-relaxed structures (backpropagation through the relaxation; see `curvax.finetune.relax_tune`).

Resumes from `workdir/checkpoint.eqx` when run again (after a kill or with more `steps`); a
changed config stops with the list of differences (--restart starts afresh).
Writes metrics.csv, eval.csv, evaluation.json (test-set displacement / volume errors and steps
before/after, forgetting check) and the fine-tuned EMA model in `workdir`.
"""
from __future__ import annotations

from curvax.cli.common import add_command, add_training_options
from curvax.config import load_config
from curvax.finetune import relax_tune
from curvax.relax.adjoints import GRAD_MODES


def add_parser(subparsers):
    p = add_command(subparsers, "relax-tune", __doc__, "fine-tune a potential on DFT relaxations (BPTT/implicit)",
                    run)
    p.add_argument("config", help="YAML config (keys: curvax.finetune.relax_tune.RelaxTuneConfig)")
    add_training_options(p)
    p.add_argument("--grad-mode", default=None, choices=GRAD_MODES,
                   help="override the config's grad_mode (e.g. to compare the gradients on one config)")


def run(args) -> int:
    overrides = {"workdir": args.workdir, "steps": args.steps, "grad_mode": args.grad_mode,
                 "x64": True if args.x64 else None}
    cfg = load_config(args.config, relax_tune.RelaxTuneConfig, overrides)
    result = relax_tune.run(cfg, progress=not args.no_progress, max_seconds=args.max_seconds, restart=args.restart)
    print(relax_tune.summary(result))
    return 0
