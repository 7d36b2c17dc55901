"""Differentiable structure relaxation (positions, optionally the cell).

    batch = make_batch(systems, potential.cutoff, skin=1.0)       # padded, graphs held fixed
    result = relax(potential, batch, cell=True, method="fire", steps=200, fmax=0.02,
                   adjoint=Checkpointed(20))                       # jit-able, differentiable

Modules: `coordinates` (generalized coordinates and forces with the cell), `optimizers` (FIRE and
steepest descent as (init, step) pairs, `unroll`), `adjoints` (`Unrolled`, `Checkpointed`,
`Implicit`, `Hybrid`, `NoGradient`), `driver` (`relax`, `relax_systems`, `relax_volume`, batches), `ase` (ASE FIRE +
FrechetCellFilter: the cross-check), `metrics` (displacement, lattice and volume errors; the
relaxation fine-tuning loss), `data` (DFT-relaxed crystals, perturbed start/target pairs).
"""
from curvax.relax.adjoints import Checkpointed, Hybrid, Implicit, NoGradient, Unrolled
from curvax.relax.coordinates import Coords, scaled_cell
from curvax.relax.driver import (RelaxResult, evaluate_batch, make_batch, relax, relax_jit, relax_systems,
                                 relax_volume, unbatch)
from curvax.relax.optimizers import fire, steepest_descent, unroll

__all__ = ["relax", "relax_jit", "relax_systems", "relax_volume", "make_batch", "unbatch", "evaluate_batch",
           "RelaxResult", "Coords", "scaled_cell", "Unrolled", "Checkpointed", "Implicit", "Hybrid", "NoGradient", "fire",
           "steepest_descent", "unroll"]
