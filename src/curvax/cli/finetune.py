"""`curvax finetune CONFIG.yaml`: phonon fine-tuning (PFT) of a pretrained model on DFT force
constants with co-training, then the before/after report on held-out materials (see
`curvax.finetune.pft` for the recipe and `curvax.finetune.evaluation` for the evaluation).

Killed runs resume from `workdir/checkpoint.eqx` when started again with the same config (more
`steps` allowed); a changed config stops with the list of differences (--restart starts afresh).
"""
from __future__ import annotations

from pathlib import Path

from curvax.cli.common import add_command, add_training_options
from curvax.config import load_config
from curvax.finetune import crossval, pft
from curvax.validation import fold_count, positive_int


def add_parser(subparsers):
    p = add_command(subparsers, "finetune", __doc__, "phonon fine-tuning (PFT) + before/after report", run)
    p.add_argument("config", help="YAML config (keys: see curvax.finetune.pft.FinetuneConfig)")
    add_training_options(p)
    p.add_argument("--no-eval", action="store_true", help="train only, skip the report")
    p.add_argument("--cv", type=fold_count, default=None, metavar="K",
                   help="instead: K-fold leave-materials-out cross-validation of the recipe (workdir/cv/cv.txt; "
                        "curvax.finetune.crossval); the report of a later run in this workdir includes it")
    p.add_argument("--cv-materials", type=positive_int, default=16, metavar="N",
                   help="materials scored per held-out fold (default 16; with 8 one N–H stretch set a column's sign)")


def run(args) -> int:
    overrides = {"workdir": args.workdir, "steps": args.steps, "x64": True if args.x64 else None}
    cfg = load_config(args.config, pft.FinetuneConfig, overrides)
    if args.cv is not None:
        if args.restart:
            raise ValueError(f"--restart does not apply to --cv: delete {Path(cfg.workdir) / 'cv'} to start the "
                             "cross-validation afresh")
        text = crossval.run(cfg, args.cv, args.cv_materials, progress=not args.no_progress,
                            max_seconds=args.max_seconds)
        if text is None:
            print("stopped early; rerun the same command to resume the cross-validation")
        else:
            print(text + f"\ncross-validation: {Path(cfg.workdir) / 'cv' / 'cv.txt'}")
        return 0
    base, tuned, holdout = pft.run(cfg, progress=not args.no_progress, max_seconds=args.max_seconds,
                                   restart=args.restart)
    workdir = Path(cfg.workdir)
    if not (workdir / "model.nqx").is_file():
        print(f"stopped early; rerun the same command to resume from {workdir / 'checkpoint.eqx'}")
        return 0
    print(f"fine-tuned model: {workdir / 'model.nqx'}")
    if not args.no_eval:
        print(pft.evaluate(cfg, base, tuned, holdout))
        print(f"report: {workdir / 'report.txt'}, {workdir / 'report.json'}, {workdir / 'report.png'}")
    return 0
