"""The (init, apply) protocol is stated once, with a runnable example, and every factory keeps it."""
import doctest

import curvax.protocol
from curvax import InitApply, LennardJones, calculator, heat_flux
from curvax.neighbors import neighbor_list
from curvax.relax import fire, steepest_descent
from curvax.thermal import dynamics


def test_docstring_example_runs():
    result = doctest.testmod(curvax.protocol, raise_on_error=True)
    assert result.attempted >= 6 and result.failed == 0


def test_factories_return_init_apply_pairs():
    pot = LennardJones(sigma=3.4, epsilon=0.01, cutoff=8.0)
    pairs = [calculator(pot), neighbor_list(8.0), heat_flux(pot, [40.0], route="edge"),
             dynamics(pot, [40.0], dt=1.0, flux_route=None), fire(lambda z: None), steepest_descent(lambda z: None)]
    for p in pairs:
        assert p._fields[:2] == InitApply._fields, type(p).__name__
        init, apply = p[:2]
        assert callable(init) and callable(apply)
