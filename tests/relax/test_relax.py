"""Differentiable relaxation: relaxers reach fmax, agree with ASE, gradients (BPTT / checkpoint /
implicit) agree with finite differences and each other, and σ of LJ is recovered from relaxations."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase.build import bulk

from curvax import LennardJones, from_atoms
from curvax.relax import make_batch, relax, relax_jit, relax_systems
from curvax.relax.adjoints import Hybrid, Implicit, Unrolled, from_name
from curvax.relax.metrics import batch_loss, displacement_msd, masses

RC, SKIN = 2.0, 0.3


def lj(sigma=1.0):
    return LennardJones(sigma=sigma, epsilon=1.0, cutoff=RC, smooth=True)


def vacancy(rattle=0.04, seed=0):
    """FCC (a = 1.55σ) 2×1×1 conventional cell with one vacancy: 7 atoms, rattled."""
    at = bulk("Ar", "fcc", a=1.55, cubic=True).repeat((2, 1, 1))
    del at[0]
    ref = at.copy()
    at.positions += np.random.default_rng(seed).normal(0, rattle, at.positions.shape)
    return at, ref


def strained_fcc(seed=0, strain=0.02, rattle=0.05):
    ref = bulk("Ar", "fcc", a=1.55, cubic=True)
    at = ref.copy()
    rng = np.random.default_rng(seed)
    eps = rng.uniform(-strain, strain, (3, 3))
    at.set_cell(at.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    at.positions += rng.normal(0, rattle, at.positions.shape)
    return at, ref


def sigma_loss(start, ref, cell, steps, fmax, mode, **kw):
    def f(sigma):
        pot = eqx.tree_at(lambda p: p.sigma, lj(), sigma)
        r = relax(pot, start, cell=cell, steps=steps, fmax=fmax, adjoint=from_name(mode), skin=SKIN, **kw)
        return batch_loss(r, ref.system.positions, ref.system.cell, ref.system.numbers, ref.node_mask)
    return f


@pytest.fixture(scope="module")
def vac_batches():
    at, ref = vacancy()
    return make_batch([from_atoms(at)], RC, SKIN), make_batch([from_atoms(ref)], RC, SKIN)


@pytest.fixture(scope="module")
def fcc_batches():
    at, ref = strained_fcc()
    return make_batch([from_atoms(at)], RC, SKIN), make_batch([from_atoms(ref)], RC, SKIN)


@pytest.mark.parametrize("cell", [False, True])
def test_unrolled_gradient_matches_finite_differences(cell, vac_batches, fcc_batches):
    """d L(relaxed structure)/dσ through 12 unrolled FIRE steps = central FD (float64)."""
    start, ref = fcc_batches if cell else vac_batches
    f = jax.jit(sigma_loss(start, ref, cell, steps=12, fmax=0.0, mode="bptt", dt=0.05))
    s0, h = jnp.asarray(1.03), 1e-5
    fd = (f(s0 + h) - f(s0 - h)) / (2 * h)
    g = jax.jit(jax.grad(f))(s0)
    assert abs(float(fd)) > 1e-3  # the loss does depend on σ
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_checkpoint_and_implicit_agree_with_bptt_positions(vac_batches):
    """Converged fixed-cell relaxation: checkpointed = BPTT (to round-off), implicit = BPTT."""
    start, ref = vac_batches
    grads = {m: float(jax.jit(jax.grad(sigma_loss(start, ref, False, 200, 1e-8, m)))(jnp.asarray(1.03)))
             for m in ("bptt", "checkpoint", "implicit")}
    assert abs(grads["bptt"]) > 1e-3
    np.testing.assert_allclose(grads["checkpoint"], grads["bptt"], rtol=1e-10)
    np.testing.assert_allclose(grads["implicit"], grads["bptt"], rtol=1e-6)


def test_implicit_agrees_with_bptt_cell(fcc_batches):
    """Converged positions + cell relaxation: implicit (Hessian over y and strain) = BPTT."""
    start, ref = fcc_batches
    grads = {m: float(jax.jit(jax.grad(sigma_loss(start, ref, True, 400, 1e-9, m)))(jnp.asarray(1.03)))
             for m in ("bptt", "implicit")}
    assert abs(grads["bptt"]) > 1e-2
    np.testing.assert_allclose(grads["implicit"], grads["bptt"], rtol=1e-6)


def _sd_sigma_grads(start, ref, steps, fmax, adjoints, eta=4e-4):  # η < 2/λ_max(H) ≈ 2/1003 Å²/eV
    def f(sigma, adjoint):
        pot = eqx.tree_at(lambda p: p.sigma, lj(), sigma)
        r = relax(pot, start, method="sd", steps=steps, fmax=fmax, adjoint=adjoint, skin=SKIN, step_size=eta)
        return batch_loss(r, ref.system.positions, ref.system.cell, ref.system.numbers, ref.node_mask)
    return {k: float(jax.jit(jax.grad(lambda s: f(s, a)))(jnp.asarray(1.03))) for k, a in adjoints.items()}


def test_hybrid_agrees_with_bptt_on_a_converged_relaxation(vac_batches):
    """Steepest descent run to fmax 1e-8: hybrid (10 unrolled steps + tail model + implicit) = BPTT."""
    g = _sd_sigma_grads(*vac_batches, 300, 1e-8, {"bptt": Unrolled(), "hybrid": Hybrid(10, 4e-4)})
    assert abs(g["bptt"]) > 1e-3
    np.testing.assert_allclose(g["hybrid"], g["bptt"], rtol=1e-6)


def test_hybrid_tail_model_carries_the_unconverged_part(vac_batches):
    """20 of 40 steps not differentiated and not converged: the hybrid's linear tail model
    recovers part of what the implicit gradient (which assumes a converged end point) misses."""
    g = _sd_sigma_grads(*vac_batches, 40, 0.0, {"bptt": Unrolled(), "hybrid": Hybrid(20, 4e-4),
                                                "implicit": Implicit()})
    assert abs(g["implicit"] - g["bptt"]) > 0.01 * abs(g["bptt"])  # not converged: implicit is off
    assert abs(g["hybrid"] - g["bptt"]) < 0.6 * abs(g["implicit"] - g["bptt"])


@pytest.mark.parametrize("method,kw", [("fire", {}), ("sd", {"step_size": 0.002})])
def test_relaxers_reach_fmax_and_padding_is_inert(method, kw):
    """Both relaxers converge on LJ; a padded batch of two sizes gives the single-structure results."""
    a, _ = vacancy(seed=1)
    b, _ = strained_fcc(seed=2)
    sa, sb = from_atoms(a), from_atoms(b)
    batch = make_batch([sa, sb], RC, SKIN)
    r = relax_jit(lj(), batch, cell=True, steps=2000, fmax=1e-3, method=method, skin=SKIN, **kw)
    assert bool(np.all(r.converged)) and bool(np.all(r.graph_ok))
    assert np.all(np.asarray(r.fmax) < 1e-3)
    single = relax_jit(lj(), make_batch([sb], RC, SKIN), cell=True, steps=2000, fmax=1e-3, method=method,
                       skin=SKIN, **kw)
    np.testing.assert_allclose(r.positions[1, :4], single.positions[0], atol=1e-10)
    np.testing.assert_allclose(r.energy[1], single.energy[0], rtol=1e-12)
    assert int(r.n_steps[1]) == int(single.n_steps[0])
    # energy went down, forces at the end really are below fmax (independent ASE-calculator check)
    from curvax.ase import Calculator
    final = b.copy()
    final.positions, final.cell = np.asarray(r.positions[1, :4]), np.asarray(r.cell[1])
    final.calc = Calculator(lj())
    assert np.abs(final.get_forces()).max() < 1e-3
    assert np.abs(final.get_stress()).max() * final.get_volume() / 4 < 1e-3


@pytest.mark.parametrize("method,kw", [("fire", {}), ("sd", {"step_size": 0.002})])
def test_no_gradient_loop_stops_at_convergence_with_the_scan_result(method, kw):
    """NoGradient's while loop gives the scan's end points and step counts (structures that
    converge at different steps in one batch; one that does not converge), and stops early: its
    cost does not grow with the step budget, the scan's does."""
    from curvax.relax.adjoints import NoGradient

    a, _ = vacancy(seed=1)
    b, _ = strained_fcc(seed=2)
    batch = make_batch([from_atoms(a), from_atoms(b)], RC, SKIN)
    for fmax in (1e-3, 1e-12):  # converged / budget exhausted
        scan = relax_jit(lj(), batch, cell=True, steps=600, fmax=fmax, method=method, skin=SKIN, **kw)
        loop = relax_jit(lj(), batch, cell=True, steps=600, fmax=fmax, method=method, skin=SKIN,
                         adjoint=NoGradient(), **kw)
        np.testing.assert_array_equal(np.asarray(loop.n_steps), np.asarray(scan.n_steps))
        np.testing.assert_array_equal(np.asarray(loop.converged), np.asarray(scan.converged))
        np.testing.assert_allclose(np.asarray(loop.positions), np.asarray(scan.positions), atol=1e-12)
        np.testing.assert_allclose(np.asarray(loop.cell), np.asarray(scan.cell), atol=1e-12)
    assert bool(np.any(scan.n_steps == 600)) and not bool(np.all(scan.converged))  # one ran out of steps
    from typing import NamedTuple

    from curvax.relax.optimizers import unroll

    class Toy(NamedTuple):  # fmax = 10 − x falls below 5 after 6 steps
        x: jnp.ndarray
        fmax: jnp.ndarray

    def force_calls(steps, early_exit):
        calls = []

        def step(s):
            jax.debug.callback(lambda: calls.append(1))
            return Toy(s.x + 1.0, 9.0 - s.x)

        _, n = jax.jit(lambda s: unroll(step, s, steps, 5.0, early_exit=early_exit))(Toy(jnp.zeros(()), jnp.full((), 10.0)))
        jax.effects_barrier()
        return len(calls), int(n)

    assert force_calls(50, True) == (6, 6) and force_calls(50, False) == (50, 6)


def test_cell_relaxation_agrees_with_ase_fire_frechet():
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from curvax.ase import Calculator

    at = bulk("Ar", "hcp", a=1.05, c=1.8)
    at.positions += np.random.default_rng(3).normal(0, 0.03, at.positions.shape)
    ase_at = at.copy()
    ase_at.calc = Calculator(lj())
    FIRE(FrechetCellFilter(ase_at), logfile=None).run(fmax=1e-5, steps=1000)
    (ours,), info = relax_systems(lj(), [from_atoms(at)], cell=True, steps=1000, fmax=1e-5, skin=SKIN,
                                  chunk=1000)
    assert info["converged"][0]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ours.cell), axis=1), ase_at.cell.lengths(), rtol=1e-5)
    np.testing.assert_allclose(abs(np.linalg.det(np.asarray(ours.cell))), ase_at.get_volume(), rtol=1e-5)
    np.testing.assert_allclose(info["energy"][0], ase_at.get_potential_energy(), rtol=1e-8)
    # hcp c/a of LJ is not the input 1.71: the relaxation did something
    c_over_a = ase_at.cell.lengths()[2] / ase_at.cell.lengths()[0]
    assert abs(c_over_a - 1.8 / 1.05) > 0.02


def test_fine_tuning_sigma_recovers_target_lattice():
    """Targets relaxed with σ* = 1; start σ = 0.92; fit σ to relaxations alone (implicit gradients,
    L-BFGS with a line search: the loss is a smooth function of one parameter)."""
    structs = [bulk("Ar", "fcc", a=1.5, cubic=True), bulk("Ar", "hcp", a=1.1, c=1.8), bulk("Ar", "bcc", a=1.3)]
    first = make_batch([from_atoms(s) for s in structs], RC, SKIN)
    relaxed = relax_jit(lj(1.0), first, cell=True, steps=300, fmax=1e-7, skin=SKIN)
    assert bool(np.all(relaxed.converged)) and bool(np.all(relaxed.graph_ok))
    targets = [from_atoms(s)._replace(positions=relaxed.positions[k, :len(s)], cell=relaxed.cell[k])
               for k, s in enumerate(structs)]
    rng = np.random.default_rng(0)
    starts = [t._replace(positions=t.positions * 1.02 + rng.normal(0, 0.03, t.positions.shape),
                         cell=t.cell * 1.02) for t in targets]
    start, ref = make_batch(starts, RC, SKIN), make_batch(targets, RC, SKIN)
    value_and_grad = jax.jit(jax.value_and_grad(sigma_loss(start, ref, True, 300, 1e-7, "implicit")))
    opt = optax.lbfgs()
    sigma = jnp.asarray(0.92)
    state = opt.init(sigma)
    l0 = None
    for _ in range(5):
        loss, g = value_and_grad(sigma)
        l0 = float(loss) if l0 is None else l0
        upd, state = opt.update(g, state, sigma, value=loss, grad=g, value_fn=lambda s: value_and_grad(s)[0])
        sigma = optax.apply_updates(sigma, upd)
    assert abs(float(sigma) - 1.0) < 1e-4, float(sigma)
    # the loss (displacements + lattice + volume errors) of the relaxations with the fitted σ ~ 0
    assert float(value_and_grad(sigma)[0]) < 1e-8 * l0


def test_graph_ok_flags_atoms_that_moved_too_far():
    at, _ = vacancy(rattle=0.0)
    at.positions[0] += [0.3, 0.0, 0.0]
    b = make_batch([from_atoms(at)], RC, 0.05)
    r = relax_jit(lj(), b, steps=200, fmax=1e-4, skin=0.05)
    assert not bool(r.graph_ok[0])
    b = make_batch([from_atoms(at)], RC, 1.0)
    assert bool(relax_jit(lj(), b, steps=200, fmax=1e-4, skin=1.0).graph_ok[0])


def test_displacement_loss_physics():
    at = bulk("NaCl", "rocksalt", a=5.6)
    s = from_atoms(at)
    mask = jnp.ones(2, bool)
    # a lattice translation of one atom plus a rigid shift of all costs nothing
    x = s.positions.at[0].add(s.cell[1]) + jnp.array([0.3, -0.2, 0.1])
    assert float(displacement_msd(x, s.cell, s.positions, s.cell, s.numbers, mask)) < 1e-20
    # moving Cl by d: the relative displacement d, shared by mass: L = m_Na m_Cl d² / (m_Na + m_Cl)²
    d = 0.1
    x = s.positions.at[1, 2].add(d)
    m = np.asarray(masses(s.numbers))
    expect = m[0] * m[1] * d ** 2 / m.sum() ** 2
    np.testing.assert_allclose(displacement_msd(x, s.cell, s.positions, s.cell, s.numbers, mask), expect,
                               rtol=1e-10)


def test_bad_input_errors():
    mol = from_atoms(bulk("Ar", "fcc", a=1.55))._replace(pbc=(False, False, False))
    with pytest.raises(ValueError, match="periodic"):
        make_batch([mol], RC, SKIN)
    b = make_batch([from_atoms(bulk("Ar", "fcc", a=1.55))], RC, SKIN)
    with pytest.raises(ValueError, match="grad_mode"):
        from_name("magic")
    with pytest.raises(TypeError, match="adjoint"):
        relax(lj(), b, adjoint="implicit")
    with pytest.raises(ValueError, match="relaxer"):
        relax(lj(), b, method="bfgs")
    with pytest.raises(ValueError, match="structure 0.*4 atoms.*exceeds"):
        make_batch([from_atoms(bulk("Ar", "fcc", a=1.55, cubic=True))], RC, SKIN, n_atoms=2)


def test_nequix_relaxation_reaches_fmax(nequix32):
    """One small case with the real model: rattled, strained Si (2 atoms), positions + cell."""
    at = bulk("Si", "diamond", a=5.55)
    at.positions += np.random.default_rng(0).normal(0, 0.05, at.positions.shape)
    s = from_atoms(at, dtype=jnp.float32)
    batch = make_batch([s], nequix32.cutoff, 0.5)
    r = relax_jit(nequix32, batch, cell=True, steps=40, fmax=0.02, skin=0.5)
    assert bool(r.converged[0]) and bool(r.graph_ok[0]), (r.fmax, r.n_steps)
    from curvax.ase import Calculator
    final = at.copy()
    final.positions, final.cell = np.asarray(r.positions[0]), np.asarray(r.cell[0])
    final.calc = Calculator(nequix32)
    assert np.abs(final.get_forces()).max() < 0.03
    start = at.copy()
    start.calc = Calculator(nequix32)
    assert final.get_potential_energy() < start.get_potential_energy()
    assert abs(final.get_volume() / start.get_volume() - 1) < 0.1


def test_relax_volume_reaches_zero_pressure_from_either_side():
    """Isotropic scaling to zero pressure (LJ fcc Ar and a rattled, non-cubic cell, float64):
    |p| below tolerance, and the relaxed lattice does not depend on the starting volume."""
    from curvax import LennardJones, compute
    from curvax.relax import relax_volume

    lj = LennardJones(sigma=3.4, epsilon=0.0104, cutoff=8.5, smooth=True)
    fcc = bulk("Ar", "fcc", a=5.45, cubic=True)  # expanded; its copy below is compressed
    odd = bulk("Ar", "fcc", a=5.4) * (2, 1, 1)
    odd.rattle(0.05, seed=2)
    cells = [fcc, fcc.copy(), odd]
    cells[1].set_cell(np.asarray(fcc.cell) * 0.94, scale_atoms=True)
    scaled, s, p = relax_volume(lj, cells, ptol=1e-7)
    assert np.all(p < 1e-7)
    assert s[0] < 0.99 and s[1] > 1.01  # it had to move, in opposite directions
    assert abs(s[0] - 0.94 * s[1]) < 1e-6  # to the same lattice
    for a in scaled:  # checked by the independent calculator route
        stress = np.asarray(compute(lj, from_atoms(a))[0]["stress"])  # Voigt, eV/Å³
        assert abs(stress[:3].sum()) / 3 < 1e-7
    np.testing.assert_allclose(scaled[2].get_scaled_positions(), odd.get_scaled_positions(), atol=1e-12)

