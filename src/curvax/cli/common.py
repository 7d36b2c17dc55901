"""What every sub-command shares: the parser style (full description, defaults shown), the
`--model` option, and reading + validating structure files before any model is loaded."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from curvax.validation import check_atoms, nonnegative_float, positive_int

MODEL_HELP = ("model spec: a Nequix .nqx path or registered name (nequix-mp-1), "
              "lj:sigma=..,epsilon=..,cutoff=.. (Lennard-Jones with a smooth cutoff) or "
              "morse:epsilon=..,r0=..,rho0=..")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def add_command(subparsers, name: str, doc: str, help: str, run) -> argparse.ArgumentParser:
    """A sub-command parser whose --help shows the whole module docstring and the defaults."""
    p = subparsers.add_parser(name, help=help, description=doc.strip(), formatter_class=_Formatter)
    p.set_defaults(func=run)
    return p


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The options of the resumable training commands (`finetune`, `relax-tune`)."""
    p.add_argument("--workdir", default=None, help="override the config's workdir")
    p.add_argument("--steps", type=positive_int, default=None, help="override the config's number of steps")
    p.add_argument("--max-seconds", type=nonnegative_float, default=None,
                   help="stop (after a checkpoint) once this much wall time is used (0: after the first "
                        "step); rerun to resume")
    p.add_argument("--restart", action="store_true",
                   help="discard the workdir's checkpoint and metrics and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_frames(path, what: str = "structure", periodic: bool = True) -> list:
    """All frames of an ASE-readable file, each validated (`curvax.validation.check_system`);
    errors name the file and frame."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as e:  # noqa: BLE001  (ASE raises many types for unreadable files)
        raise ValueError(f"{path}: cannot read {what}s ({type(e).__name__}: {e})") from None
    if not frames:
        raise ValueError(f"{path}: no {what}s")
    for k, atoms in enumerate(frames):
        where = f"{path} frame {k}" if len(frames) > 1 else str(path)
        check_atoms(atoms, where, periodic)
    return frames


def supercell_matrix(values, option="--supercell"):
    """3 or 9 integers → a 3×3 integer matrix with a positive determinant."""
    if values is None:
        return None
    if len(values) not in (3, 9):
        raise ValueError(f"{option} takes 3 or 9 integers, got {len(values)}")
    m = np.diag(values) if len(values) == 3 else np.asarray(values, dtype=int).reshape(3, 3)
    if round(np.linalg.det(m)) <= 0:
        raise ValueError(f"{option} {' '.join(map(str, values))}: the matrix must have a positive "
                         f"determinant (e.g. 2 2 2)")
    return m
