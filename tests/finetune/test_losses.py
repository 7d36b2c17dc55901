"""PFT losses: the sampled HVP loss is an unbiased, exact estimate of the dense-Hessian loss."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from curvax import LennardJones, Morse, from_atoms
from curvax.batch import graph_of, pad_structure
from curvax.hessian import hessian
from curvax.finetune.losses import (dense_hessian_loss, hessian_column_loss, hessian_probe_loss, phonon_loss, EFSWeights)


def _structure(atoms, cutoff, n_atoms=None, n_edges=None):
    s = from_atoms(atoms)
    g = graph_of(s, cutoff)
    n_edges = n_edges or int(np.sum(np.asarray(g.mask)))
    return pad_structure(s, g, n_atoms or len(atoms), n_edges)


def _mean_unit_loss(pot, s, fc, kind):
    n = s.system.positions.shape[0]
    basis = jnp.eye(3 * n).reshape(3 * n, n, 3)
    real = np.repeat(np.asarray(s.node_mask), 3)
    losses = jax.vmap(lambda v: hessian_probe_loss(pot, s, fc, v, kind))(basis)
    return jnp.sum(jnp.where(real, losses, 0.0)) / real.sum()


@pytest.mark.parametrize("pot_target", [
    (LennardJones(sigma=2.0, epsilon=0.1, cutoff=5.0, smooth=True),
     LennardJones(sigma=2.06, epsilon=0.12, cutoff=5.0, smooth=True)),
    (Morse(epsilon=0.3, r0=2.4, rho0=4.0, rcut1=1.6, rcut2=2.2), Morse(epsilon=0.35, r0=2.5, rho0=4.2, rcut1=1.6, rcut2=2.2)),
])
def test_hvp_loss_gradient_equals_dense_hessian_loss_gradient(pot_target):
    pot, target = pot_target
    atoms = bulk("Cu", "fcc", a=3.1) * (2, 1, 1)
    atoms.rattle(0.05, seed=3)
    s = _structure(atoms, pot.cutoff, n_atoms=len(atoms) + 2, n_edges=None)  # padded atoms too
    fc = hessian(target, s.system, s.graph)
    params, static = eqx.partition(pot, eqx.is_inexact_array)

    def sampled(p):
        return _mean_unit_loss(eqx.combine(p, static), s, fc, "mse")

    def dense(p):
        return dense_hessian_loss(eqx.combine(p, static), s, fc, "mse")

    ls, gs = jax.value_and_grad(sampled)(params)
    ld, gd = jax.value_and_grad(dense)(params)
    assert float(ld) > 1e-6  # the two models differ: the test is not trivial
    np.testing.assert_allclose(float(ls), float(ld), rtol=1e-10)
    for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gd)):
        assert abs(float(b)) > 1e-8
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8)


def test_sampled_loss_is_zero_for_exact_target_and_ignores_padding():
    pot = LennardJones(sigma=2.0, epsilon=0.1, cutoff=5.0, smooth=True)
    atoms = bulk("Cu", "fcc", a=3.1) * (2, 1, 1)
    atoms.rattle(0.05, seed=4)
    s = _structure(atoms, pot.cutoff)
    sp = _structure(atoms, pot.cutoff, n_atoms=len(atoms) + 3, n_edges=int(np.sum(np.asarray(s.graph.mask))) + 7)
    fc = hessian(pot, s.system, s.graph)
    fcp = jnp.zeros((sp.system.positions.shape[0],) * 2 + (3, 3)).at[: len(atoms), : len(atoms)].set(fc)
    key = jax.random.PRNGKey(0)
    for mode in ("unit", "random"):
        assert float(hessian_column_loss(pot, sp, fcp, key, mode)) < 1e-12
    wrong = fc * 1.1
    wrongp = fcp.at[: len(atoms), : len(atoms)].set(wrong)
    v = jnp.zeros((len(atoms), 3)).at[1, 2].set(1.0)
    vp = jnp.zeros((len(atoms) + 3, 3)).at[1, 2].set(1.0)
    a = hessian_probe_loss(pot, s, wrong, v)
    b = hessian_probe_loss(pot, sp, wrongp, vp)
    assert float(a) > 1e-4
    np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_phonon_loss_forces_from_hvp_primal_equal_force_pass():
    """The cheap route (forces from the HVP's primal) equals the full E/F/S route."""
    pot = Morse(epsilon=0.3, r0=2.4, rho0=4.0, rcut1=1.6, rcut2=2.2)
    atoms = bulk("Cu", "fcc", a=3.3) * (2, 1, 1)
    atoms.rattle(0.08, seed=5)
    s = _structure(atoms, pot.cutoff, n_atoms=len(atoms) + 1)
    s = s._replace(forces=jnp.zeros_like(s.forces))  # DFT equilibrium label F* = 0, no E/σ labels
    fc = jnp.zeros(s.system.positions.shape[:1] * 2 + (3, 3))
    key = jax.random.PRNGKey(1)
    cheap, t1 = phonon_loss(pot, s, fc, key, 100.0, EFSWeights(0.0, 20.0, 0.0))
    full, t2 = phonon_loss(pot, s, fc, key, 100.0, EFSWeights(0.0, 20.0, 5.0))  # σ label NaN → 0
    assert float(t1["forces"]) > 1e-3 and float(t1["hessian"]) > 1e-3
    np.testing.assert_allclose(float(t1["forces"]), float(t2["forces"]), rtol=1e-12)
    np.testing.assert_allclose(float(cheap), float(full), rtol=1e-12)


def test_several_probes_share_one_linearisation():
    """L_H with P probes from one linearisation = the mean of P single-probe losses, value and
    parameter gradient (float64, LJ)."""
    from curvax.finetune.losses import sample_directions, structure_hvp

    pot = LennardJones(sigma=2.0, epsilon=0.1, cutoff=5.0, smooth=True)
    target = LennardJones(sigma=2.06, epsilon=0.12, cutoff=5.0, smooth=True)
    atoms = bulk("Cu", "fcc", a=3.1) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    s = _structure(atoms, pot.cutoff, n_atoms=len(atoms) + 1)
    fc = hessian(target, s.system, s.graph)
    vs = sample_directions(jax.random.PRNGKey(0), s.node_mask, "random", 5)
    assert vs.shape == (5,) + s.system.positions.shape and not np.any(np.asarray(vs)[:, -1])
    _, hv = structure_hvp(pot, s, vs)
    for v, h in zip(vs, hv):
        np.testing.assert_allclose(h, structure_hvp(pot, s, v)[1], rtol=1e-12, atol=1e-12)

    def many(p):
        return hessian_probe_loss(p, s, fc, vs, "mae")

    def mean_single(p):
        return jnp.mean(jnp.stack([hessian_probe_loss(p, s, fc, v, "mae") for v in vs]))

    (a, ga), (b, gb) = eqx.filter_value_and_grad(many)(pot), eqx.filter_value_and_grad(mean_single)(pot)
    assert float(a) > 0
    np.testing.assert_allclose(a, b, rtol=1e-12)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=1e-10)
    # phonon_loss with n_probes draws that many probes from its key
    key = jax.random.PRNGKey(3)
    tot, terms = phonon_loss(pot, s, fc, key, 1.0, EFSWeights(0.0, 0.0, 0.0), "unit", "mae", n_probes=4)
    v4 = sample_directions(key, s.node_mask, "unit", 4).astype(fc.dtype)
    np.testing.assert_allclose(terms["hessian"], hessian_probe_loss(pot, s, fc, v4, "mae"), rtol=1e-12)
