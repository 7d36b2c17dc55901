"""glp-style calculator: a jit-able `calculate(system, state) -> (results, state)`.

    calc = calculator(potential)            # Calculator(init, calculate)
    state = calc.init(system)               # host side: allocates the neighbour list
    results, state = calc.calculate(system, state)   # jit-able; rebuilds the graph
    if results["overflow"]: state = calc.init(system)  # re-allocate and call again

`compute(potential, system)` does exactly that loop for one-off, non-jitted use.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import numpy as np

from curvax import derivatives, neighbors
from curvax.neighbors import Graph, NeighborSpec
from curvax.potentials.base import check_species
from curvax.system import System

jax.tree_util.register_static(NeighborSpec)


class NeighborState(NamedTuple):
    spec: NeighborSpec  # static shapes
    graph: Graph


class Calculator(NamedTuple):
    init: Callable
    calculate: Callable


def calculator(potential, stress: bool = True, virials: bool = False,
               capacity_multiplier: float = 1.25, stress_route: str = "strain") -> Calculator:
    """Factory for the pure pair (init, calculate) of `potential`."""

    def init(system: System) -> NeighborState:
        check_species(potential, system.numbers)
        spec, graph = neighbors.allocate(system, potential.cutoff, capacity_multiplier)
        return NeighborState(spec, graph)

    @eqx.filter_jit
    def calculate(system: System, state: NeighborState):
        graph = neighbors.build(system, state.spec)
        res = derivatives.properties(potential, system, graph, stress=stress, virials=virials,
                                     stress_route=stress_route)
        res["overflow"] = graph.overflow
        return res, NeighborState(state.spec, graph)

    return Calculator(init, calculate)


@eqx.filter_jit
def _properties(potential, system, spec, stress=True, virials=False, stress_route="strain"):
    graph = neighbors.build(system, spec)
    res = derivatives.properties(potential, system, graph, stress=stress, virials=virials,
                                 stress_route=stress_route)
    res["overflow"] = graph.overflow
    return res


def compute(potential, system: System, stress: bool = True, virials: bool = False,
            stress_route: str = "strain", spec: NeighborSpec | None = None,
            capacity_multiplier: float = 1.25) -> tuple[dict, NeighborSpec]:
    """One evaluation with automatic re-allocation on overflow. Returns (numpy results, spec).

    Pass the returned `spec` back to reuse the compiled function on similar structures.
    """
    check_species(potential, system.numbers)
    stress = stress and all(system.pbc)
    for _ in range(3):
        if spec is None:
            spec, _ = neighbors.allocate(system, potential.cutoff, capacity_multiplier)
        res = _properties(potential, system, spec, stress, virials, stress_route)
        if not bool(res["overflow"]):
            return {k: np.asarray(v) for k, v in res.items() if k != "overflow"}, spec
        spec = None
    raise RuntimeError("neighbour list overflowed three times in a row")
