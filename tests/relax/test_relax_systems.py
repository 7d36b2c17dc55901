"""`relax_systems` re-allocates its graph when atoms pass the skin (own module: test_relax.py
already holds many compiled programs, and the suite releases them per module — conftest)."""
import numpy as np
from ase.build import bulk

from curvax import LennardJones, from_atoms
from curvax.relax import make_batch, relax_jit, relax_systems

RC = 2.0


def lj():
    return LennardJones(sigma=1.0, epsilon=1.0, cutoff=RC, smooth=True)


def test_relax_systems_follows_atoms_past_the_skin():
    """A chunk stops at the first step past the graph's skin and continues on a fresh graph:
    steepest descent with a skin of 0.05 (atoms move ≈ 0.2) reaches exactly the end point and
    step count of a relaxation whose graph never runs out (skin 3); FIRE with skin 0.2 (restarted
    at each new graph) the same minimum; a fixed graph with these skins breaks its bound."""
    atoms = bulk("Ar", "fcc", a=1.55, cubic=True).repeat(2)
    del atoms[0]
    atoms.positions += np.random.default_rng(5).normal(0, 0.12, atoms.positions.shape)
    start = from_atoms(atoms)
    for method, skin, kw, tol in (("sd", 0.05, dict(step_size=0.002), 1e-10), ("fire", 0.2, {}, 1e-6)):
        fixed = relax_jit(lj(), make_batch([start], RC, skin), steps=400, fmax=1e-6, skin=skin, method=method, **kw)
        assert not bool(fixed.graph_ok[0])
        (small,), a = relax_systems(lj(), [start], steps=400, fmax=1e-6, skin=skin, chunk=400, method=method, **kw)
        (large,), b = relax_systems(lj(), [start], steps=400, fmax=1e-6, skin=3.0, chunk=400, method=method, **kw)
        assert a["converged"][0] and b["converged"][0]
        np.testing.assert_allclose(np.asarray(small.positions), np.asarray(large.positions), rtol=0, atol=tol)
        if method == "sd":
            assert a["n_steps"][0] == b["n_steps"][0]
