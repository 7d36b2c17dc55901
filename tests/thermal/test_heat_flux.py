"""Heat flux: edge, unfolded and Hardy routes agree where theory says they must, and only there."""
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from mpnn_toy import ToyMPNN

from curvax.thermal import heat_flux as hf
from curvax.calculator import compute
from curvax.potentials import LennardJones
from curvax.system import from_atoms


def _velocities(n, seed=0, scale=0.01):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 3)) * scale)


@pytest.fixture(scope="module")
def si8():
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_lj_all_routes_equal_per_atom_virial_reference():
    """Pair potential: J_pot = −Σ_j W_j v_j with W_j the per-atom virial; W_j from ASE's own LJ
    per-atom stresses (independent code). Edge, unfolded and Hardy must all equal it."""
    from ase.calculators.lj import LennardJones as AseLJ

    atoms = bulk("Ar", "fcc", 5.26, cubic=True)
    atoms.rattle(0.08, seed=0)
    atoms.calc = AseLJ(sigma=3.4, epsilon=0.0104, rc=5.0)
    stresses = atoms.get_stresses()  # (N, 6) Voigt, Σ = stress
    w = np.zeros((len(atoms), 3, 3))
    for k, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
        w[:, a, b] = w[:, b, a] = stresses[:, k] * atoms.get_volume()
    s = from_atoms(atoms)
    v = _velocities(len(atoms))
    m = jnp.asarray(atoms.get_masses())
    ref = -np.einsum("jab,jb->a", w, np.asarray(v))
    pot = LennardJones(3.4, 0.0104, cutoff=5.0)
    hardy = hf.hardy_flux(pot, s, v, m)
    scale = np.abs(ref).max()
    assert scale > 1e-6
    np.testing.assert_allclose(hardy.flux_potential, ref, atol=1e-10 * scale)
    for route in ("edge", "unfolded"):
        f = hf.heat_flux(pot, m, route)
        res = f.apply(s, v, f.init(s))
        assert not bool(res.overflow)
        np.testing.assert_allclose(res.flux_potential, ref, atol=1e-10 * scale)
        np.testing.assert_allclose(res.forces, atoms.get_forces(), atol=1e-10)
    # convective term: Σ (½ m v² + U_i) v_i with ASE's per-atom energies
    e = 0.5 * np.asarray(m) * np.sum(np.asarray(v) ** 2, 1) / hf.FS2 + atoms.get_potential_energies()
    np.testing.assert_allclose(res.flux_convective, (e[:, None] * np.asarray(v)).sum(0), rtol=1e-10)


def test_two_step_mpnn_unfolded_equals_hardy_edge_does_not(si8):
    """2-step toy MPNN in a periodic Si cell (smaller than 2× the effective range: images matter).
    Unfolded = Hardy to round-off; the edge flux misses the many-body cross terms."""
    pot = ToyMPNN(cutoff=2.6)
    s = from_atoms(si8)
    v = _velocities(len(si8), seed=3)
    m = jnp.full(len(si8), 28.0855)
    hardy = hf.hardy_flux(pot, s, v, m)
    f = hf.heat_flux(pot, m, "unfolded")
    unf = f.apply(s, v, f.init(s))
    fe = hf.heat_flux(pot, m, "edge")
    edge = fe.apply(s, v, fe.init(s))
    scale = np.abs(hardy.flux_potential).max()
    np.testing.assert_allclose(unf.flux_potential, hardy.flux_potential, atol=1e-10 * scale)
    assert np.abs(edge.flux_potential - hardy.flux_potential).max() > 1e-4 * scale
    # all routes agree on energies and forces with the periodic calculator
    ref, _ = compute(pot, s)
    for r in (hardy, unf, edge):
        np.testing.assert_allclose(r.forces, ref["forces"], atol=1e-11)
        np.testing.assert_allclose(r.energy, ref["energy"], rtol=1e-12)
    # uniform velocity v: J_pot = −Σ_ij' (R_j' − R_i)(∂U_i/∂R_j'·v) = −V σ·v (strain-route stress)
    vt = jnp.tile(jnp.array([[0.01, -0.02, 0.005]]), (len(si8), 1))
    sig = ref["stress"]
    sigma = np.array([[sig[0], sig[5], sig[4]], [sig[5], sig[1], sig[3]], [sig[4], sig[3], sig[2]]])
    np.testing.assert_allclose(f.apply(s, vt, f.init(s)).flux_potential,
                               -si8.get_volume() * sigma @ np.asarray(vt[0]), rtol=1e-9, atol=1e-14)


def test_unfolding_covers_effective_range(si8):
    """Every image within n_interactions·cutoff of an atom of the cell is replicated (and no other)."""
    pot = ToyMPNN(cutoff=2.6)
    x, cell = si8.positions, si8.cell.array
    idx, off = hf.replicas(x, cell, (True,) * 3, 2 * 2.6)
    g = np.array(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij")).reshape(3, -1).T
    allp = (x[:, None] + (g @ cell)[None]).reshape(-1, 3)
    d = np.linalg.norm(allp[:, None] - x[None], axis=-1).min(1)
    assert len(idx) == int((d <= 2 * pot.cutoff).sum())
    assert len(set(map(tuple, np.c_[idx, off]))) == len(idx)


def test_nequix_unfolded_equals_hardy_edge_does_not(nequix64):
    """Nequix (4 message-passing steps) on a small Si cluster: the unfolded route (B-jvp) equals
    the O(N²) Hardy flux. (The periodic Nequix case needs ~900 replicas
    for its 24 Å range and is checked in benchmarks/bench_thermal.py --check.)"""
    atoms = Atoms("Si5", positions=[[0, 0, 0], [2.3, 0.2, 0.1], [0.1, 2.4, -0.2],
                                   [-0.3, 0.2, 2.2], [2.2, 2.3, 2.1]], pbc=False)
    s = from_atoms(atoms)
    v = _velocities(len(atoms), seed=5)
    m = jnp.asarray(atoms.get_masses())
    hardy = hf.hardy_flux(nequix64, s, v, m)
    f = hf.heat_flux(nequix64, m, "unfolded")
    unf = f.apply(s, v, f.init(s))
    scale = np.abs(hardy.flux_potential).max()
    assert scale > 1e-6
    np.testing.assert_allclose(unf.flux_potential, hardy.flux_potential, atol=1e-9 * scale)
    np.testing.assert_allclose(unf.forces, hardy.forces, atol=1e-9)
