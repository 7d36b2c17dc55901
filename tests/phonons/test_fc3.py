"""Third-order force constants by AD vs direct third derivatives and phono3py finite displacements;
phono3py RTA κ of Si from the DFT force sets."""
import time

import jax
import numpy as np
import pytest
from ase.build import bulk
from conftest import KAPPA

from curvax.phonons import fc3 as F
from curvax.phonons.convert import phono3py_from_atoms
from curvax.derivatives import position_energy_fn
from curvax.potentials import Morse


@pytest.fixture(scope="module")
def si_morse():
    """Diamond Si (no inversion at the atoms: FC3 ≠ 0) with a Morse toy, 2×2×2 primitive supercell."""
    pot = Morse(epsilon=0.5, r0=2.35, rho0=5.0, rcut1=1.3, rcut2=1.8)
    ph3 = phono3py_from_atoms(bulk("Si", "diamond", 5.43), [2, 2, 2], primitive_matrix="P")
    return pot, ph3, F.compute_fc3(ph3, pot)


def test_ad_fc3_equals_direct_third_derivative(si_morse):
    """phono3py fed the exact third-order forces reproduces ∂³E/∂u∂u∂u (jacfwd³) to round-off,
    from far fewer products than the 3N × 3N columns of the direct tensor."""
    pot, ph3, res = si_morse
    system, graph = F._setup(pot, ph3.supercell)
    e = position_energy_fn(pot, system, graph)
    t = jax.jacfwd(jax.jacfwd(jax.grad(e)))(system.positions)  # (N,3,N,3,N,3)
    t = np.asarray(t).transpose(0, 2, 4, 1, 3, 5)[ph3.primitive.p2s_map]
    assert np.abs(t).max() > 1.0
    np.testing.assert_allclose(res.fc3, t, atol=1e-10 * np.abs(t).max())
    h = np.asarray(jax.hessian(e)(system.positions)).transpose(0, 2, 1, 3)[ph3.phonon_primitive.p2s_map]
    np.testing.assert_allclose(res.fc2, h, atol=1e-12 * np.abs(h).max())
    assert res.n_third_order < (3 * len(system.positions)) ** 2 / 10


def test_ad_fc3_equals_phono3py_finite_displacements(si_morse):
    """Same model, phono3py's own finite displacements (±0.01 Å): agreement to the O(u²) truncation."""
    pot, ph3, res = si_morse
    fd, n_calls = F.finite_displacement_fc3(ph3, pot, distance=0.01)
    scale = np.abs(res.fc3).max()
    err = np.abs(fd - res.fc3).max()
    assert err < 2e-3 * scale, err / scale
    assert n_calls > res.n_third_order  # ± displacements: twice the supercells


def test_si_dft_kappa_reproduces_reference():
    """Si PBE (phono3py example): RTA κ at 300 K on an 11³ mesh is 119.5 W/m-K (its README).
    Runtime ≈ 20 s on 2 CPU cores (fc3 solve ≈ 4 s, RTA ≈ 14 s)."""
    import phono3py

    d = KAPPA / "Si-PBE"
    if not (d / "FORCES_FC3").is_file():
        pytest.skip("Si-PBE data missing")
    t0 = time.perf_counter()
    ph3 = phono3py.load(str(d / "phono3py_disp.yaml"), forces_fc3_filename=str(d / "FORCES_FC3"),
                        produce_fc=True, log_level=0)
    kappa = F.kappa_rta(ph3, temperatures=[300.0], mesh=[11, 11, 11])
    print(f"Si DFT kappa {kappa[0, :3]} W/m-K in {time.perf_counter() - t0:.1f} s")
    np.testing.assert_allclose(kappa[0, :3], 119.5, atol=0.3)
    assert np.abs(kappa[0, 3:]).max() < 1e-6
