"""The one protocol of curvax's factories: a pair of pure functions `(init, apply)`.

    init(...)  -> state            host side: allocates what has a static size (neighbour-list
                                   capacity, unfolding, relaxer state); may look at the data
    apply(...) -> result or (result, state)
                                   pure and jit-able; reports an `overflow` flag instead of
                                   raising when a static size ran out (then call init again)

Every factory returns an `InitApply` named tuple (or one with the same two first fields and a
few extra constants), so it unpacks as a pair:

| factory                                   | init                        | apply                                    |
|-------------------------------------------|-----------------------------|------------------------------------------|
| `curvax.calculator(potential)`            | system → NeighborState      | (system, state) → (results, state)       |
| `curvax.neighbors.neighbor_list(cutoff)`  | system → (spec, graph)      | (system, spec) → graph                   |
| `curvax.thermal.heat_flux(pot, masses)`   | system → flux state         | (system, velocities, state) → HeatFlux   |
| `curvax.thermal.dynamics(pot, masses, dt)`| (system, v, key) → (MDState, aux) | (state, aux, n) → (state, frames)  |
| `curvax.relax.fire(force_fn)`, `steepest_descent` | z → relaxer state   | state → state (one step)                 |

A runnable example (Lennard-Jones argon; energy [eV], forces [eV/Å]):

>>> import ase.build, curvax
>>> potential = curvax.LennardJones(sigma=3.405, epsilon=0.0103, cutoff=8.0)
>>> system = curvax.from_atoms(ase.build.bulk("Ar", "fcc", a=5.26, cubic=True))
>>> init, apply = curvax.calculator(potential)
>>> state = init(system)
>>> results, state = apply(system, state)
>>> bool(results["overflow"]), results["forces"].shape
(False, (4, 3))
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

InitFn = Callable[..., Any]
ApplyFn = Callable[..., Any]


class InitApply(NamedTuple):
    """(init, apply): see the module docstring."""

    init: InitFn
    apply: ApplyFn
