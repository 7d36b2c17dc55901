"""`curvax gk CONFIG.yaml`: Green–Kubo thermal conductivity from MD with the exact heat flux
(the workflow is `curvax.thermal.workflow.run`; its module doc says what is written).

Config keys (YAML; see configs/gk-example.yaml and `curvax.thermal.workflow.GreenKuboConfig`):
  model:        a `load_potential` spec: Nequix .nqx path or name, "lj:sigma=..,epsilon=..,cutoff=..",
                "morse:..."                                                            (required)
  structure:    a file (ASE-readable; relative to the config file) or
                {bulk: Ar, crystalstructure: fcc, a: 5.26, cubic: true} (ase.build.bulk)  (required)
  supercell:    [n1, n2, n3] (default [1, 1, 1])
  temperature:  K (required)          dt: fs (default 2)
  equilibration_steps (default 1000)  steps: production steps per run (required)
  sample_every: steps per flux sample (default 1)        runs: independent runs (default 1)
  friction:     Langevin γ [1/fs] for equilibration (default 0.01)
  flux_route:   unfolded | edge (default unfolded)       correlation_time: fs (default: first dip)
  max_lag:      samples (default: steps / sample_every / 2)
  skin: Å (default 1.0)  chunk: frames per jitted chunk (default 200)  seed: int (default 0)
  x64: bool (default false)  output: directory (default "gk-<config name>", relative to cwd)
"""
from __future__ import annotations

from pathlib import Path

from curvax.cli.common import add_command
from curvax.config import load_config
from curvax.thermal import workflow


def add_parser(subparsers):
    p = add_command(subparsers, "gk", __doc__, "Green-Kubo thermal conductivity from MD with exact heat flux", run)
    p.add_argument("config", help="YAML config (see configs/gk-example.yaml)")
    p.add_argument("--output", default=None, help="override the config's output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    cfg = load_config(args.config, workflow.GreenKuboConfig, {"x64": True if args.x64 else None})
    output = args.output or cfg.output or f"gk-{Path(args.config).stem}"
    res = workflow.run(cfg, output, progress=not args.no_progress)
    err = "n/a (1 run)" if res["n_runs"] < 2 else f"{res['kappa_stderr_W_mK']:.3g}"
    print(f"kappa = {res['kappa_W_mK']:.4g} ± {err} W/m-K at t_c = {res['correlation_time_fs']:.1f} fs "
          f"({res['n_runs']} runs, T = {res['temperature_K']} K, {res['n_atoms']} atoms); results in {output}")
    return 0
