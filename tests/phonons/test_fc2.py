"""FC2 by HVPs on phonopy's symmetry-reduced displacements: exact (= dense Hessian), = finite
displacements of the same model, compact = full, acoustic sum rule."""
import numpy as np
import pytest
from ase.build import bulk
from conftest import PHONONS

from curvax.ase import Calculator
from curvax.phonons.fc2 import (acoustic_sum_rule_violation, dense_force_constants, finite_displacement_force_constants,
                                force_constants, force_constants_from_atoms, unitcell_force_constants)
from curvax.phonons.convert import phonopy_to_atoms
from curvax.potentials import Morse


@pytest.fixture(scope="module")
def morse():
    return Morse(epsilon=0.4, r0=2.55, rho0=6.0, rcut1=4.0, rcut2=5.0)


@pytest.fixture(scope="module")
def hcp(morse):
    """hcp (P6_3/mmc, 2 atoms) compressed off its ideal c/a, 2×2×2 (16 atoms)."""
    return force_constants_from_atoms(bulk("Mg", "hcp", a=2.6, c=4.1), [2, 2, 2], morse)


def test_symmetry_reduced_equals_dense_hessian(hcp, morse):
    """phonopy rebuilds all 48 columns from a handful of HVPs; no truncation error, so the
    result equals the dense AD Hessian to round-off (float64)."""
    phonon, res = hcp
    assert res.n_hvp < 3 * res.n_atoms / 8
    dense = dense_force_constants(phonon, morse)
    scale = np.abs(dense).max()
    assert scale > 1.0
    assert np.abs(res.force_constants - dense).max() < 1e-10 * scale
    assert np.array_equal(phonon.force_constants, res.force_constants)


def test_compact_equals_full(hcp, morse):
    phonon, full = hcp
    compact = force_constants(phonon, morse, compact=True, assign=False).force_constants
    p2s = phonon.primitive.p2s_map
    assert compact.shape == (len(p2s), full.n_atoms, 3, 3)
    assert np.abs(compact - full.force_constants[p2s]).max() < 1e-12 * np.abs(compact).max()


def test_acoustic_sum_rule(hcp):
    phonon, res = hcp
    fc = res.force_constants
    assert acoustic_sum_rule_violation(fc) < 1e-12 * np.abs(fc).max()
    assert np.abs(fc - fc.transpose(1, 0, 3, 2)).max() < 1e-12 * np.abs(fc).max()
    # translation is a zero mode: the Γ frequencies of the acoustic branches vanish
    phonon.run_qpoints([[0, 0, 0]])
    freqs = np.sort(np.abs(phonon.qpoints.frequencies[0]))
    assert np.all(freqs[:3] < 1e-5)
    assert freqs[3] > 1.0


def test_morse_equals_finite_displacements(hcp, morse):
    """Central differences with u = 1e-3 Å: truncation error u²/6·∂⁴E ≈ 1e-7·|Φ| (float64
    round-off ≈ 1e-16·|F|/u ≈ 1e-13), so the two must agree to 1e-5 relative."""
    phonon, res = hcp
    fd, n_calls = finite_displacement_force_constants(phonon, Calculator(morse), distance=1e-3)
    assert n_calls >= res.n_hvp
    assert np.abs(res.force_constants - fd).max() < 1e-5 * np.abs(fd).max()


@pytest.fixture(scope="module")
def zno_phonon():
    """Wurtzite ZnO (P6_3mc, 4 atoms) from the DFT set, 1×1×1 supercell (periodic images are
    summed in the FC, so this is a valid, cheap phonopy supercell for the equality)."""
    import phonopy

    if not (PHONONS / "ZnO" / "phonopy_disp.yaml").is_file():
        pytest.skip("ZnO DFT set missing")
    unitcell = phonopy.load(str(PHONONS / "ZnO" / "phonopy_disp.yaml"), produce_fc=False).unitcell
    return phonopy.Phonopy(unitcell, supercell_matrix=np.diag([1, 1, 1]), primitive_matrix="P")


def test_nequix_equals_finite_displacements(zno_phonon, nequix64):
    """Nequix MP in float64. FD: central differences u = 1e-3 Å, error O(u²·∂⁴E) ≈ 1e-6·|Φ|;
    tolerance 1e-4·max|Φ| leaves margin for the 4-layer model's larger ∂⁴E."""
    res = force_constants(zno_phonon, nequix64, assign=False)
    fc = res.force_constants
    scale = np.abs(fc).max()
    assert 1.0 < scale < 100.0
    fd, n_calls = finite_displacement_force_constants(zno_phonon, Calculator(nequix64), distance=1e-3)
    assert np.abs(fc - fd).max() < 1e-4 * scale
    assert res.n_hvp < n_calls  # ± pairs for FD, one HVP per displacement for AD
    assert acoustic_sum_rule_violation(fc) < 1e-10 * scale


def test_phonopy_to_atoms_roundtrip(zno_phonon):
    atoms = phonopy_to_atoms(zno_phonon.supercell)
    assert np.allclose(atoms.positions, zno_phonon.supercell.positions)
    assert np.allclose(atoms.get_masses(), zno_phonon.supercell.masses)


def test_shape_buckets_equal_the_exact_shape(hcp, morse):
    """Padding the supercell to a shape bucket (extra atoms without edges, padded edges) and
    evaluating the HVPs in fixed chunks gives the same FC2 (float64, Morse)."""
    from curvax.batch import bucket_shape

    phonon, ref = hcp
    bucketed = force_constants(phonon, morse, assign=False, bucket=True, chunk=3)
    assert bucketed.n_hvp == ref.n_hvp
    np.testing.assert_allclose(bucketed.force_constants, ref.force_constants, rtol=1e-12, atol=1e-12)
    assert bucket_shape(16, 700) == (32, 768) and bucket_shape(33, 512) == (64, 512)


@pytest.mark.slow
def test_nequix_models_share_compiled_programs(nequix32):
    """Base and the authors' PFT model load onto one tree structure (parameters are arguments),
    so the second model's bucketed FC2 compiles nothing; numbers equal the unbucketed route."""
    import jax

    from conftest import NEQUIX_MP_PFT
    from curvax import load_potential
    from curvax.phonons.fc2 import _columns

    pft = load_potential(str(NEQUIX_MP_PFT), dtype=jax.numpy.float32)
    assert jax.tree.structure(pft) == jax.tree.structure(nequix32)
    phonon, _ = force_constants_from_atoms(bulk("Si", "diamond", a=5.43), [2, 2, 2], nequix32, bucket=True, chunk=4)
    n_compiled = _columns.jit._cached._cache_size()
    for pot in (nequix32, pft):
        a = force_constants(phonon, pot, assign=False, bucket=True, chunk=4).force_constants
        b = force_constants(phonon, pot, assign=False).force_constants
        np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max())
    assert _columns.jit._cached._cache_size() == n_compiled + 1  # only the unbucketed shape was new


def test_folded_force_constants_are_the_unit_cell_hessian(morse):
    """Φ_u(a, b) = Σ_{j ≡ b} Φ_S(a, j) of a 2×2×2 supercell's FC2 equals the dense Hessian of the
    rattled unit cell as a periodic structure (float64), and keeps the acoustic sum rule."""
    from phonopy import Phonopy

    from curvax.phonons.convert import atoms_to_phonopy

    unit = bulk("Mg", "hcp", a=2.6, c=4.1).repeat((1, 1, 2))
    unit.rattle(0.03, seed=2)  # no symmetry: every entry of the fold is tested
    big = Phonopy(atoms_to_phonopy(unit), supercell_matrix=np.diag([2, 2, 1]), primitive_matrix="P", log_level=0)
    big.force_constants = dense_force_constants(big, morse)
    small = Phonopy(atoms_to_phonopy(unit), supercell_matrix=np.eye(3, dtype=int), primitive_matrix="P", log_level=0)
    ref = dense_force_constants(small, morse)
    folded = unitcell_force_constants(big)
    assert folded.shape == (4, 4, 3, 3)
    np.testing.assert_allclose(folded, ref, atol=1e-10 * np.abs(ref).max())
    assert np.abs(folded.sum(axis=1)).max() < 1e-9 * np.abs(ref).max()
    with pytest.raises(ValueError, match="full"):
        unitcell_force_constants(big, np.zeros((4, 32, 3, 3)))
