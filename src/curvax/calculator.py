"""glp-style calculator: the (init, apply) pair of `curvax.protocol` for energy, forces, stress.

    init, apply = calculator(potential)     # CalculatorFns(init, apply)
    state = init(system)                    # host side: allocates the neighbour list
    results, state = apply(system, state)   # jit-able; rebuilds the graph
    if results["overflow"]: state = init(system)  # re-allocate and call again

With `skin > 0` the list is built at cutoff + skin and `apply` rebuilds it only when
`neighbors.needs_rebuild` says an atom or the cell moved too far since the last build (at fixed
cell: max |Δx| ≥ skin/2), as jax-md and glp do; `results["rebuilt"]` says whether it did. Worth
it for cheap pair potentials (the build dominates); a message-passing model pays for the extra
edges in every call, so skin = 0 (rebuild every call) is the default.
`compute(potential, system)` does exactly that loop for one-off, non-jitted use.

Pair potentials (`curvax.potentials.PairPotential`) are evaluated on a half neighbour list
(each pair once: half the pairs to build, store and differentiate) unless `half_list=False`;
message-passing models always get the full list. Same numbers either way (tested).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax import derivatives, neighbors
from curvax.neighbors import Graph, NeighborSpec
from curvax.potentials.base import PairPotential, check_species
from curvax.system import System
from curvax.validation import check_system

jax.tree_util.register_static(NeighborSpec)


class NeighborState(NamedTuple):
    spec: NeighborSpec  # static shapes (list cutoff = potential cutoff + skin)
    graph: Graph
    positions: jnp.ndarray  # (N, 3) where `graph` was built [Å]
    cell: jnp.ndarray  # (3, 3) the cell it was built in [Å]


class CalculatorFns(NamedTuple):
    """(init, apply) of `calculator` (`curvax.protocol`)."""

    init: Callable  # init(system) -> NeighborState
    apply: Callable  # apply(system, state) -> (results dict, state)


def list_potential(potential, half_list: bool | None = None):
    """The potential as evaluated on the list the calculator builds for it: a pair potential's
    half-list copy (`half_list` None or True), else `potential` itself; half_list=True for a
    message-passing model is a ValueError."""
    if isinstance(potential, PairPotential):
        return potential.on_half_list(half_list is not False)
    if half_list:
        raise ValueError(f"{type(potential).__name__} needs the full neighbour list (each directed edge carries "
                         f"its own message); half_list=True is for pair potentials")
    return potential


def calculator(potential, stress: bool = True, virials: bool = False, capacity_multiplier: float = 1.25,
               stress_route: str = "strain", skin: float = 0.0, half_list: bool | None = None) -> CalculatorFns:
    """Factory for the pure pair (init, calculate) of `potential`; `skin` [Å]: neighbour-list
    reuse; `half_list`: None (pair potentials on a half list), True or False (module doc)."""
    if not skin >= 0:
        raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
    potential = list_potential(potential, half_list)
    half = getattr(potential, "half_list", False)

    def init(system: System) -> NeighborState:
        check_system(system)
        check_species(potential, system.numbers)
        spec, graph = neighbors.allocate(system, potential.cutoff + skin, capacity_multiplier, half=half)
        return NeighborState(spec, graph, jnp.asarray(system.positions), jnp.asarray(system.cell))

    @eqx.filter_jit
    def apply(system: System, state: NeighborState):
        check_spec(potential, state.spec)  # static: checked once per compilation
        if skin > 0:
            stale = neighbors.needs_rebuild(system.positions, system.cell, state.positions, state.cell,
                                            potential.cutoff, skin, system.pbc)
            graph = jax.lax.cond(stale, lambda: neighbors.build(system, state.spec), lambda: state.graph)
            ref_x = jnp.where(stale, system.positions, state.positions)
            ref_c = jnp.where(stale, system.cell, state.cell)
        else:
            stale, ref_x, ref_c = jnp.array(True), system.positions, system.cell
            graph = neighbors.build(system, state.spec)
        res = derivatives.properties(potential, system, graph, stress=stress, virials=virials,
                                     stress_route=stress_route)
        res["overflow"], res["rebuilt"] = graph.overflow, stale
        return res, NeighborState(state.spec, graph, ref_x, ref_c)

    return CalculatorFns(init, apply)


@eqx.filter_jit
def _properties(potential, system, spec, stress=True, virials=False, stress_route="strain"):
    graph = neighbors.build(system, spec)
    res = derivatives.properties(potential, system, graph, stress=stress, virials=virials,
                                 stress_route=stress_route)
    res["overflow"] = graph.overflow
    return res


def compute(potential, system: System, stress: bool = True, virials: bool = False,
            stress_route: str = "strain", spec: NeighborSpec | None = None,
            capacity_multiplier: float = 1.25, half_list: bool | None = None) -> tuple[dict, NeighborSpec]:
    """One evaluation with automatic re-allocation on overflow. Returns (numpy results, spec).

    Pass the returned `spec` back to reuse the compiled function on similar structures.
    `half_list` as in `calculator`.
    """
    potential = list_potential(potential, half_list)
    half = getattr(potential, "half_list", False)
    check_system(system)
    check_species(potential, system.numbers)
    if spec is not None:
        check_spec(potential, spec)
    stress = stress and all(system.pbc)
    for _ in range(3):
        if spec is None:
            spec, _ = neighbors.allocate(system, potential.cutoff, capacity_multiplier, half=half)
        res = _properties(potential, system, spec, stress, virials, stress_route)
        if not bool(res["overflow"]):
            return {k: np.asarray(v) for k, v in res.items() if k != "overflow"}, spec
        last, spec = spec, None
    raise RuntimeError(
        f"neighbour list overflowed three times in a row (cutoff {last.cutoff} Å, capacity "
        f"{last.capacity} edges, method {last.method}): {neighbors.explain_overflow(system, last)}")


def check_spec(potential, spec: NeighborSpec) -> None:
    """Raise ValueError if a neighbour spec cannot hold the potential's interactions."""
    if spec.cutoff < potential.cutoff:
        raise ValueError(
            f"neighbour list cutoff {spec.cutoff} Å (capacity {spec.capacity} edges) is smaller than "
            f"the cutoff {potential.cutoff} Å of {type(potential).__name__}: pairs would be missed; "
            f"allocate the list with the potential's cutoff")
    if spec.half != getattr(potential, "half_list", False):
        given, wanted = ("half", "full") if spec.half else ("full", "half")
        raise ValueError(f"a {given} neighbour list was given to {type(potential).__name__}, which is evaluated on "
                         f"a {wanted} list: its energy would be {'halved' if spec.half else 'doubled'}; "
                         f"allocate with half={not spec.half}")
