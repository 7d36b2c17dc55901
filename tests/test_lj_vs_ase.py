"""Analytic references: curvax LJ and Morse equal ASE's calculators to 1e-8 (float64).

Also checks that the two stress routes (strain derivative vs Σ r_ij ⊗ ∂E/∂r_ij) agree, and
exercises the glp-style calculator factory and the ASE calculator, incl. re-allocation.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.calculators.morse import MorsePotential as AseMorse

import curvax.ase
from curvax import LennardJones, Morse, calculator, compute, from_atoms

ATOL = 1e-8
SIGMA, EPS, RC = 3.4, 0.0104, 8.0  # Ar-like LJ [Å, eV, Å]


def _strain(atoms, eps):
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return atoms


def structures():
    """Rattled, strained, triclinic; the first two are smaller than 2×cutoff in every direction."""
    prim = bulk("Ar", "fcc", a=5.3)  # primitive cell, plane spacing ~3 Å << 2 rc
    prim = _strain(prim, np.array([[0.02, 0.03, 0.0], [0.0, -0.03, 0.01], [0.04, 0.0, 0.05]]))
    prim.rattle(0.0, seed=0)
    two = _strain(bulk("Ar", "fcc", a=5.1).repeat((2, 1, 1)),
                  np.array([[-0.02, 0.0, 0.06], [0.01, 0.04, 0.0], [0.0, -0.05, 0.0]]))
    two.rattle(0.15, seed=1)
    tric = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 2))  # 32 atoms, 10.6 Å < 2 rc
    tric = _strain(tric, np.array([[0.01, 0.08, -0.05], [0.0, 0.03, 0.07], [0.02, 0.0, -0.04]]))
    tric.rattle(0.2, seed=2)
    tric.positions[::4] += tric.cell.array[1]  # unwrapped positions
    big = bulk("Ar", "fcc", a=5.2, cubic=True).repeat((4, 4, 4))  # 256 atoms, 20.8 Å > 2 rc
    big = _strain(big, np.array([[0.0, 0.02, 0.0], [0.01, 0.0, 0.0], [0.0, 0.0, 0.03]]))
    big.rattle(0.1, seed=3)
    return {"prim": prim, "two": two, "tric": tric, "big": big}


STRUCTS = structures()


def _ase_results(atoms, calc, stresses=True):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces(), "stress": atoms.get_stress()}
    if stresses:
        out["stresses"] = atoms.get_stresses()
    return out


def _nontrivial(atoms, ref):
    assert abs(ref["energy"]) > 1e-3 and np.abs(ref["stress"]).max() > 1e-5
    if len(atoms) > 1:
        assert np.abs(ref["forces"]).max() > 1e-3


def _compare(res, ref, keys):
    for k in keys:
        np.testing.assert_allclose(np.asarray(res[k]), ref[k], rtol=0, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("half_list", [True, False])
@pytest.mark.parametrize("name,smooth", [("prim", False), ("prim", True), ("two", False),
                                         ("tric", False), ("tric", True), ("big", False)])
def test_lj_equals_ase(name, smooth, half_list):
    """On the half list (each pair once; the default for pair potentials) and on the full list:
    ASE's energies, forces, stress and per-atom stresses, and the two lists agree to 1e-12."""
    atoms = STRUCTS[name]
    ref = _ase_results(atoms, AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=smooth))
    _nontrivial(atoms, ref)
    pot = LennardJones(SIGMA, EPS, cutoff=RC, smooth=smooth)
    system = from_atoms(atoms)
    assert system.positions.dtype == jnp.float64
    # virials=True: stress and per-atom stresses by the edge route Σ r_ij ⊗ ∂E/∂r_ij
    res, spec = compute(pot, system, virials=True, half_list=half_list)
    assert spec.half == half_list
    _compare(res, ref, ["energy", "energies", "forces", "stress", "stresses"])
    np.testing.assert_allclose(res["virials"].sum(0), _voigt_to_3x3(res["stress"]) * atoms.get_volume(),
                               rtol=0, atol=1e-10)
    if not smooth:  # strain route (∂E/∂ε) gives the same stress
        res_s, _ = compute(pot, system, half_list=half_list)
        _compare(res_s, ref, ["energy", "forces", "stress"])
    if half_list:  # same numbers as the full list from half the pairs
        full, full_spec = compute(pot, system, virials=True, half_list=False)
        assert spec.capacity <= 0.5 * full_spec.capacity + 16  # min_capacity 16
        for k in ("energy", "energies", "forces", "stress", "virials"):
            np.testing.assert_allclose(res[k], full[k], rtol=0, atol=1e-12, err_msg=k)


def _voigt_to_3x3(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


@pytest.mark.parametrize("half_list", [True, False])
@pytest.mark.parametrize("name", ["prim", "tric"])
def test_morse_equals_ase(name, half_list):
    atoms = STRUCTS[name]
    kw = dict(epsilon=0.35, r0=3.7, rho0=5.0, rcut1=1.4, rcut2=2.2)  # cutoff 8.1 Å
    ref = _ase_results(atoms, AseMorse(**kw), stresses=False)
    _nontrivial(atoms, ref)
    pot = Morse(**kw)
    res, _ = compute(pot, from_atoms(atoms), half_list=half_list)
    _compare(res, ref, ["energy", "energies", "forces", "stress"])
    res_e, _ = compute(pot, from_atoms(atoms), stress_route="edges", half_list=half_list)
    np.testing.assert_allclose(res_e["stress"], res["stress"], rtol=0, atol=1e-10)


def test_list_kind_mismatch_is_refused():
    """A full list given to a half-list copy (or the reverse) would double (halve) the energy:
    refused, naming the fix; message-passing models cannot take a half list."""
    from curvax.calculator import list_potential
    from mpnn_toy import ToyMPNN

    pot = LennardJones(SIGMA, EPS, cutoff=RC)
    system = from_atoms(STRUCTS["tric"])
    _, full_spec = compute(pot, system, half_list=False)
    with pytest.raises(ValueError, match="full neighbour list was given.*doubled.*half=True"):
        compute(pot, system, spec=full_spec)
    with pytest.raises(ValueError, match="needs the full neighbour list"):
        list_potential(ToyMPNN(cutoff=3.0), half_list=True)


def test_calculator_factory_and_reallocation():
    pot = LennardJones(SIGMA, EPS, cutoff=RC)
    calc = calculator(pot)
    atoms = STRUCTS["big"]
    state = calc.init(from_atoms(atoms))
    moved = atoms.copy()
    moved.rattle(0.05, seed=7)
    res, state = calc.apply(from_atoms(moved), state)
    assert not bool(res["overflow"])
    _compare(res, _ase_results(moved, AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC), stresses=False),
             ["energy", "forces", "stress"])
    # compress by 12 %: more pairs than the capacity (and bins narrower than rc) -> overflow flag
    dense = _strain(moved, -0.12 * np.eye(3))
    res, _ = calc.apply(from_atoms(dense), state)
    assert bool(res["overflow"])
    state = calc.init(from_atoms(dense))  # re-allocate
    res, state = calc.apply(from_atoms(dense), state)
    assert not bool(res["overflow"])
    _compare(res, _ase_results(dense, AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC), stresses=False),
             ["energy", "forces", "stress"])


def test_compute_reallocates_stale_spec():
    """`compute` given a spec that is too small silently re-allocates and returns the right numbers."""
    pot = LennardJones(SIGMA, EPS, cutoff=RC)
    _, spec = compute(pot, from_atoms(STRUCTS["big"]))
    dense = _strain(STRUCTS["big"], -0.12 * np.eye(3))
    res, spec2 = compute(pot, from_atoms(dense), spec=spec)
    assert spec2.capacity > spec.capacity
    _compare(res, _ase_results(dense, AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC), stresses=False),
             ["energy", "forces", "stress"])


def test_ase_calculator():
    pot = LennardJones(SIGMA, EPS, cutoff=RC, smooth=True)
    ref_calc = AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=True)
    atoms = STRUCTS["two"].copy()
    atoms.calc = curvax.ase.Calculator(pot)
    ref = _ase_results(atoms, ref_calc)
    assert np.isclose(atoms.get_potential_energy(), ref["energy"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(atoms.get_stresses(), ref["stresses"], atol=ATOL)
    np.testing.assert_allclose(atoms.get_potential_energies(), ref["energies"], atol=ATOL)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], atol=ATOL)
    np.testing.assert_allclose(atoms.get_stress(), ref["stress"], atol=ATOL)
    # a compression (the stored spec overflows and is re-allocated), then a different atom count
    atoms.set_cell(atoms.cell.array * 0.8, scale_atoms=True)
    for step in range(2):
        ref = _ase_results(atoms, ref_calc, stresses=False)
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"], atol=ATOL)
        np.testing.assert_allclose(atoms.get_stress(), ref["stress"], atol=ATOL)
        assert np.isclose(atoms.get_potential_energy(), ref["energy"], rtol=0, atol=ATOL)
        calc = atoms.calc
        atoms = atoms.repeat((1, 1, 2))
        atoms.rattle(0.05, seed=9)
        atoms.calc = calc
