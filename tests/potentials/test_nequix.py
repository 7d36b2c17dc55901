"""Nequix through curvax: AD derivatives vs finite differences (float64), vs the nequix
package's own ASE calculator (float32), invariances and the virial sum rule.

One small structure (5-atom SrTiO3, strained to triclinic and rattled; far smaller than
2×cutoff = 12 Å) keeps the number of Nequix compilations at four.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from conftest import NEQUIX_MP
from curvax import compute, from_atoms, load_potential

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _srtio3():
    a = 3.95
    atoms = Atoms("SrTiO3", scaled_positions=[[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                  cell=np.diag([a, a, a]) @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, -0.04], [0.05, 0.0, 1.03]]),
                  pbc=True)
    atoms.rattle(0.08, seed=1)
    atoms.positions[2] += atoms.cell.array[0]  # one atom outside the cell
    return atoms


ATOMS = _srtio3()


def _voigt_to_3x3(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


@pytest.fixture(scope="module")
def ref64(nequix64):
    system = from_atoms(ATOMS)
    res, spec = compute(nequix64, system, capacity_multiplier=1.5)
    return system, res, spec


def test_forces_stress_match_finite_differences(nequix64, ref64):
    system, res, spec = ref64

    def e(sys):  # same spec: re-uses the compiled function (no new compile)
        out, spec2 = compute(nequix64, sys, spec=spec)
        assert spec2 is spec
        return float(out["energy"])

    h = 1e-4
    fd_forces = np.zeros((len(ATOMS), 3))
    for i in range(len(ATOMS)):
        for a in range(3):
            d = jnp.zeros_like(system.positions).at[i, a].set(h)
            fd_forces[i, a] = -(e(system._replace(positions=system.positions + d))
                                - e(system._replace(positions=system.positions - d))) / (2 * h)
    assert np.abs(fd_forces).max() > 0.05  # rattled: genuine forces
    np.testing.assert_allclose(res["forces"], fd_forces, rtol=0, atol=1e-6)

    # σ_ab = (1/V) ∂E/∂ε_ab, with x -> x F, cell -> cell F, F = 1 + ε, ε symmetric (ε_ab = ε_ba = h/2)
    fd_stress = np.zeros(6)
    for v, (a, b) in enumerate(VOIGT):
        eps = np.zeros((3, 3))
        eps[a, b] += h / 2
        eps[b, a] += h / 2
        ep, em = (e(system._replace(positions=system.positions @ f, cell=system.cell @ f))
                  for f in (jnp.eye(3) + eps, jnp.eye(3) - eps))
        fd_stress[v] = (ep - em) / (2 * h) / float(system.volume)
    assert np.abs(fd_stress).max() > 1e-3
    np.testing.assert_allclose(res["stress"], fd_stress, rtol=0, atol=1e-7)


def test_virials_sum_to_stress(nequix64, ref64):
    """Σ_i W_i = V σ (edge route) equals the strain-route stress; W symmetric."""
    system, res, spec = ref64
    res_v, _ = compute(nequix64, system, virials=True, spec=spec)
    w = res_v["virials"].sum(0)
    np.testing.assert_allclose(w, w.T, atol=1e-8)
    np.testing.assert_allclose(w / float(system.volume), _voigt_to_3x3(res["stress"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res_v["stresses"].sum(0), res["stress"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res_v["forces"], res["forces"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res_v["energies"].sum(), res["energy"], rtol=0, atol=1e-9)


def test_invariances(nequix64, ref64):
    system, res, spec = ref64
    rng = np.random.default_rng(5)
    # translation (atoms leave the cell: the list wraps them)
    moved = system._replace(positions=system.positions + jnp.asarray(rng.normal(size=3) * 3.0))
    r_t, _ = compute(nequix64, moved, spec=spec)
    np.testing.assert_allclose(r_t["energy"], res["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r_t["forces"], res["forces"], rtol=0, atol=1e-9)
    # rotation: E invariant, F -> F Rᵀ, σ -> R σ Rᵀ
    rot = Rotation.random(random_state=3).as_matrix()
    rotated = system._replace(positions=system.positions @ rot.T, cell=system.cell @ rot.T)
    r_r, _ = compute(nequix64, rotated, spec=spec)
    np.testing.assert_allclose(r_r["energy"], res["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r_r["forces"], res["forces"] @ rot.T, rtol=0, atol=1e-8)
    np.testing.assert_allclose(_voigt_to_3x3(r_r["stress"]), rot @ _voigt_to_3x3(res["stress"]) @ rot.T,
                               rtol=0, atol=1e-9)
    # permutation of the atoms
    perm = np.array([3, 0, 4, 2, 1])
    permuted = system._replace(positions=system.positions[perm], numbers=system.numbers[perm])
    r_p, _ = compute(nequix64, permuted, spec=spec)
    np.testing.assert_allclose(r_p["energy"], res["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r_p["forces"], res["forces"][perm], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r_p["energies"], res["energies"][perm], rtol=0, atol=1e-9)
    # swapping the species of two atoms does change the energy: the checks above can fail
    swapped = system._replace(numbers=system.numbers[jnp.array([1, 0, 2, 3, 4])])
    r_s, _ = compute(nequix64, swapped, spec=spec)
    assert abs(r_s["energy"] - res["energy"]) > 1e-2


def test_matches_nequix_calculator(nequix32):
    from nequix.calculator import NequixCalculator

    atoms = ATOMS.copy()
    with jax.enable_x64(False):  # nequix builds its float32 template with the default dtype
        atoms.calc = NequixCalculator(model_path=str(NEQUIX_MP), use_kernel=False)
        e_ref, f_ref, s_ref = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert np.abs(f_ref).max() > 0.05
    res, _ = compute(nequix32, from_atoms(atoms, dtype=jnp.float32))
    assert res["forces"].dtype == np.float32
    np.testing.assert_allclose(res["energy"], e_ref, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(res["forces"], f_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(res["stress"], s_ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_rematerialised_phonon_gradient_equals_the_plain_one(small_nequix):
    """grad_θ of the sampled-HVP loss (third-order AD) with the edge messages taken 32 edges at
    a time under jax.checkpoint equals the plain gradient (float32, as shipped; energy and
    forces too), and the rematerialised program really is the smaller one: XLA's compiled
    peak (temporary + output bytes) is less than half the plain program's. On a toy-size
    Nequix (`small_nequix`; same code path, seconds instead of minutes for Nequix MP — whose
    gradient agreed to 2e-7 and whose peak fell 241 → 103 MiB at 8 atoms: benchmarks)."""
    import equinox as eqx
    from ase.build import bulk

    from curvax.batch import graph_of, pad_structure
    from curvax.finetune.losses import hessian_column_loss
    from curvax.system import from_atoms as to_system

    model = load_potential(str(small_nequix), dtype=jnp.float32)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.03, seed=1)
    s = to_system(atoms, dtype=jnp.float32)
    g = graph_of(s, model.cutoff)
    n_edges = int(np.sum(np.asarray(g.mask)))
    st = pad_structure(s, g, 8, n_edges + 5)  # not a multiple of the chunk, with padded edges
    fc = jnp.zeros((8, 8, 3, 3), jnp.float32).at[jnp.arange(8), jnp.arange(8)].set(3.0 * jnp.eye(3, dtype=jnp.float32))
    key = jax.random.PRNGKey(3)
    chunked = model.rematerialised(32)
    assert chunked.remat_edges == 32 and n_edges > 4 * 32

    def grad_of(pot):
        params, static = eqx.partition(pot, eqx.is_inexact_array)
        loss = jax.jit(jax.value_and_grad(lambda p: hessian_column_loss(eqx.combine(p, static), st, fc, key)))
        m = loss.lower(params).compile().memory_analysis()
        return loss(params), m.temp_size_in_bytes + m.output_size_in_bytes

    (loss, grad), peak = grad_of(model)
    (loss_r, grad_r), peak_r = grad_of(chunked)
    assert abs(float(loss_r) - float(loss)) <= 1e-6 * abs(float(loss)), (float(loss_r), float(loss))
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grad))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_r)))
    assert 0 < scale and diff <= 1e-4 * scale, (diff, scale)
    assert peak_r < 0.5 * peak, (peak_r, peak)
    res, _ = compute(model, s)
    res_r, _ = compute(chunked, s)
    np.testing.assert_allclose(res_r["energy"], res["energy"], rtol=1e-6)
    np.testing.assert_allclose(res_r["forces"], res["forces"], rtol=0, atol=1e-5)


def test_reading_the_file_equals_the_nequix_loader(nequix32):
    """`read_nequix` reads the weights into a shapes-only template (no random initialisation):
    the same module tree and the same float32 weights as `nequix.model.load_model`."""
    from nequix.model import load_model

    with jax.enable_x64(False):
        ref, _ = load_model(str(NEQUIX_MP))
    got, want = jax.tree.flatten(nequix32.model), jax.tree.flatten(ref)
    assert str(got[1]) == str(want[1]) and len(got[0]) == len(want[0]) > 10
    for a, b in zip(got[0], want[0]):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scipy_signal_loads_only_when_used():
    """e3nn-jax's start-up import of scipy.signal is deferred (`_nequix_model`) and still
    works when something uses it."""
    import subprocess
    import sys

    program = ("import sys\n"
               "from curvax.potentials.nequix import _nequix_model\n"
               "_nequix_model()\n"
               "import nequix.model, e3nn_jax, scipy\n"
               "print(type(sys.modules['scipy.signal']).__name__)\n"
               "import numpy as np\n"
               "print(scipy.signal.find_peaks(np.array([0., 2., 0., 3., 0.]))[0].tolist())\n"
               "print(type(sys.modules['scipy.signal']).__name__, sys.modules['scipy.signal'].find_peaks.__module__)\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "_LoadedOnFirstUse"
    assert out[1] == "[1, 3]"
    assert out[2] == "module scipy.signal._peak_finding"
