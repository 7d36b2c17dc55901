"""The one model loader: specs, errors, the precision policy, save → load round trips."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from conftest import NEQUIX_MP

from curvax import LennardJones, Morse, compute, from_atoms, load_potential, save_potential
from curvax.potentials.base import parameter_dtype


def _energy(pot, atoms):
    return compute(pot, from_atoms(atoms, dtype=parameter_dtype(pot)))[0]["energy"]


def test_analytic_specs_equal_direct_construction():
    ar = bulk("Ar", "fcc", a=5.3) * (2, 2, 2)
    lj = load_potential("lj:sigma=3.405,epsilon=0.0103,cutoff=8.5,r_inner=7.5")
    direct = LennardJones(sigma=3.405, epsilon=0.0103, cutoff=8.5, r_inner=7.5, smooth=True)
    assert lj.smooth and lj.cutoff == 8.5 and lj.r_inner == 7.5
    assert _energy(lj, ar) == pytest.approx(_energy(direct, ar), rel=1e-14)
    hard = load_potential("lj:sigma=3.405,epsilon=0.0103,cutoff=8.5,smooth=false")
    assert not hard.smooth and _energy(hard, ar) != pytest.approx(_energy(lj, ar), rel=1e-6)
    cu = bulk("Cu", "fcc", a=3.6)
    morse = load_potential("morse:epsilon=0.4,r0=2.5,rho0=4.0")
    assert _energy(morse, cu) == pytest.approx(_energy(Morse(epsilon=0.4, r0=2.5, rho0=4.0), cu), rel=1e-14)


@pytest.mark.parametrize("spec, message", [
    ("lj:rho=1", "unknown Lennard-Jones parameter 'rho'"),
    ("lj:sigma=abc", "parameter sigma"),
    ("lj:sigma", "expected lj:key=value"),
    ("lj:smooth=maybe", "smooth: expected true or false"),
    ("morse:D=1", "unknown Morse parameter 'D'"),
    ("no-such-model", "unknown model 'no-such-model'"),
])
def test_bad_specs(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_potential(spec)


def test_dtype_follows_the_precision_policy():
    assert parameter_dtype(load_potential("lj:sigma=1")) == jnp.float64  # the test suite runs with x64
    assert parameter_dtype(load_potential("lj:sigma=1", dtype=jnp.float32)) == jnp.float32
    with jax.enable_x64(False):
        assert parameter_dtype(load_potential("lj:sigma=1")) == jnp.float32


def test_save_then_load(tmp_path, nequix32):
    lj = load_potential("lj:sigma=2.5,epsilon=0.3,cutoff=6")
    path = save_potential(lj, tmp_path / "lj")
    assert path.suffix == ".json" and '"sigma": 2.5' in path.read_text()
    path = save_potential(nequix32, tmp_path / "model")
    assert path.name == "model.nqx"
    back = load_potential(str(path), dtype=jnp.float32)
    for a, b in zip(jax.tree.leaves(nequix32), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert NEQUIX_MP.is_file()
