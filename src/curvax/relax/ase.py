"""Relaxation with ASE's FIRE and a cell filter through `curvax.ase.Calculator`: the
cross-check of the JAX relaxers (`curvax.relax.driver`) and the route of `curvax phonons --relax`."""
from __future__ import annotations

import warnings

import numpy as np

from curvax.ase import Calculator


def _single_thread_blas():
    """FrechetCellFilter does many 3×3 scipy logm/expm_frechet solves per step; a multi-threaded
    OpenBLAS spinning against JAX's threads makes each take milliseconds (6× slower relaxations
    measured on 2 cores). Limit BLAS to one thread when threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def relax_atoms(atoms, potential, fmax: float = 1e-3, steps: int = 1000, cell: bool = True,
                capacity_multiplier: float = 2.0):
    """Relax positions (+ cell with `FrechetCellFilter`) by ASE FIRE with `curvax.ase.Calculator`.
    fmax [eV/Å] applies to forces and to the filter's cell forces. The neighbour list gets
    `capacity_multiplier` × the initial pair count, so a shrinking cell does not overflow it
    (each re-allocation recompiles the model). Returns a new Atoms; raises ValueError if not
    converged in `steps`."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    a = atoms.copy()
    a.calc = Calculator(potential, capacity_multiplier=capacity_multiplier)
    obj = FrechetCellFilter(a) if cell else a
    with warnings.catch_warnings(), _single_thread_blas():
        warnings.simplefilter("ignore")
        opt = FIRE(obj, logfile=None)
        ok = opt.run(fmax=fmax, steps=steps)
    if not ok:
        fm = float(np.abs(a.get_forces()).max())
        raise ValueError(f"relaxation not converged in {steps} FIRE steps (max |F| = {fm:.2e} eV/Å)")
    a.calc = None
    return a
