"""The shipped float32 path (JAX x64 off, float32 Nequix weights): the numbers users get agree
with the float64 references to float32 accuracy, and stay float32 end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from curvax import LennardJones, compute, force_constants, from_atoms
from curvax.phonons.convert import atoms_to_phonopy


@pytest.fixture
def float32_mode():
    with jax.enable_x64(False):
        yield


def test_lj_float32_matches_ase(float32_mode):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=3)
    pot = LennardJones(sigma=3.405, epsilon=0.0103, cutoff=8.0)
    res, _ = compute(pot, from_atoms(atoms))
    assert pot.sigma.dtype == jnp.float32 and res["forces"].dtype == np.float32
    ref = atoms.copy()
    ref.calc = AseLJ(sigma=3.405, epsilon=0.0103, rc=8.0, smooth=False)
    np.testing.assert_allclose(res["energy"], ref.get_potential_energy(), rtol=2e-6)
    f_ref = ref.get_forces()
    # float32 round-off: each force sums ≈ 80 pair terms (half list) of up to ≈ max|F|: ε₃₂·√80·max|F| ≈ 1e-6·max|F|
    np.testing.assert_allclose(res["forces"], f_ref, atol=5e-6 * np.abs(f_ref).max() + 1e-7)
    np.testing.assert_allclose(res["stress"], ref.get_stress(), atol=1e-7)  # eV/Å³, Voigt


def _si16():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1)
    atoms.rattle(0.03, seed=0)
    return atoms


def test_nequix_float32_matches_float64(nequix32, nequix64):
    atoms = _si16()
    ref, _ = compute(nequix64, from_atoms(atoms, dtype=jnp.float64))
    with jax.enable_x64(False):
        res, _ = compute(nequix32, from_atoms(atoms))
    assert res["forces"].dtype == np.float32 and res["stress"].dtype == np.float32
    assert abs(res["energy"] - ref["energy"]) < 2e-6 * abs(ref["energy"])
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-4)      # eV/Å
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=2e-6)      # eV/Å³
    assert np.abs(ref["forces"]).max() > 0.05  # rattled: the comparison is not of zeros


def test_nequix_fc2_float32_matches_float64(nequix32, nequix64):
    """FC2 by HVPs in float32 (the shipped phonon path) vs float64; phonopy's symmetrisation
    restores the acoustic sum rule that float32 round-off breaks."""
    from phonopy import Phonopy

    def fc(pot):
        ph = Phonopy(atoms_to_phonopy(bulk("Si", "diamond", a=5.43)), supercell_matrix=np.diag([2, 2, 2]),
                     primitive_matrix="auto", log_level=0)
        return force_constants(ph, pot).force_constants

    ref = fc(nequix64)
    with jax.enable_x64(False):
        got = fc(nequix32)
    assert np.abs(ref).max() > 1.0  # eV/Å²
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max())
    assert np.abs(got.sum(axis=1)).max() < 1e-6 * np.abs(got).max()
