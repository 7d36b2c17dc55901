"""Checks at the boundary: what users hand to curvax is validated before any model is loaded
or compiled, with errors that name the file/key/atom and the fix.

- `check_system(system, where)`: array shapes agree, positions and cell finite, atomic numbers
  real (1–118), a periodic cell not degenerate, and no two atoms closer than `MIN_DISTANCE`
  (0.5 Å, below any chemical bond; periodic images included). A NaN position reaching spglib
  (phonopy's symmetry search) crashes the process, and coincident atoms give NaN energies
  that look "converged": both stop here instead.
- `check_atoms(atoms, where, periodic)`: the same for an `ase.Atoms` (and, with `periodic`, a
  periodic 3D cell), before any model or phonopy object sees it.
- `positive_int`, `positive_float`, `nonnegative_float`, `fold_count` (≥ 2): argparse types naming the option.
- `check_writable(directory, what)`: an output folder that can be written, checked before the
  expensive step, so that no finished work is lost at the end.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from curvax.neighbors import check_system as _check_graphable
from curvax.system import System, from_atoms

MIN_DISTANCE = 0.5  # Å: closer atoms are an input error (H2 bond 0.74 Å)


def check_atoms(atoms, where: str, periodic: bool = False) -> None:
    """`check_system` of an `ase.Atoms`; with `periodic`, also a periodic 3D cell."""
    if periodic and (not all(atoms.pbc) or atoms.cell.rank < 3):
        raise ValueError(f"{where}: needs a periodic 3D cell (pbc = {atoms.pbc.tolist()})")
    try:
        system = from_atoms(atoms)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    check_system(system, where)


def check_system(system: System, where: str = "structure", min_distance: float = MIN_DISTANCE) -> None:
    """ValueError naming `where` and the problem (module doc) unless `system` is usable."""
    positions = np.asarray(system.positions)
    numbers = np.asarray(system.numbers)
    cell = np.asarray(system.cell)
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] < 1:
        raise ValueError(f"{where}: positions must have shape (N, 3) with N ≥ 1, got {positions.shape}")
    if numbers.shape != (positions.shape[0],):
        raise ValueError(f"{where}: {numbers.shape} atomic numbers for {positions.shape[0]} positions")
    if cell.shape != (3, 3):
        raise ValueError(f"{where}: cell must have shape (3, 3), got {cell.shape}")
    wrong = np.flatnonzero((numbers < 1) | (numbers > 118))
    if wrong.size:
        raise ValueError(f"{where}: atom(s) {wrong[:10].tolist()} have atomic numbers "
                         f"{numbers[wrong[:10]].tolist()}, not 1–118")
    try:
        _check_graphable(system)  # finite positions (atoms named) and cell, periodicity, volume
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if min_distance > 0 and len(positions) > 1:
        i, j, d = _closest_pair(positions, cell, system.pbc)
        if d < min_distance:
            raise ValueError(f"{where}: atoms {i} and {j} are {d:.3g} Å apart (< {min_distance} Å): "
                             f"overlapping atoms; check the structure file")


def _closest_pair(positions, cell, pbc) -> tuple[int, int, float]:
    """(i, j, distance [Å]) of the closest pair of distinct atoms or periodic images."""
    from ase import Atoms
    from matscipy.neighbours import neighbour_list

    periodic = all(bool(p) for p in pbc)
    if periodic:
        atoms = Atoms(positions=positions, cell=cell, pbc=True, numbers=np.ones(len(positions), int))
        i, j, d = neighbour_list("ijd", atoms, MIN_DISTANCE * 1.01)  # periodic images included
        if d.size == 0:
            return 0, 0, float("inf")
        k = int(np.argmin(d))
        return int(i[k]), int(j[k]), float(d[k])
    from scipy.spatial import cKDTree

    d, idx = cKDTree(positions).query(positions, k=2)
    k = int(np.argmin(d[:, 1]))
    return k, int(idx[k, 1]), float(d[k, 1])


def _number(kind, test, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not (np.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    parse.__name__ = f"{what} {kind.__name__}"
    return parse


positive_int = _number(int, lambda v: v > 0, "positive")
positive_float = _number(float, lambda v: v > 0, "positive")
nonnegative_float = _number(float, lambda v: v >= 0, "≥ 0")
fold_count = _number(int, lambda v: v >= 2, "≥ 2")  # folds of a cross-validation


def check_writable(directory, what: str = "output folder") -> Path:
    """Create `directory` (and parents) and check that a file can be written in it; ValueError
    naming it otherwise. Returns the directory."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".curvax-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {directory} is not writable ({e.strerror or e}); choose another") from None
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{what} {directory} is not writable; choose another")
    return directory
