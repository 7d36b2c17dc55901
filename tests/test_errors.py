"""Bad input gets a clear error naming the problem; never a silent wrong number."""
import dataclasses
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import curvax.ase
from conftest import NEQUIX_MP
from curvax import LennardJones, calculator, compute, from_atoms, load_potential
from curvax.neighbors import allocate, build

calc_module = sys.modules["curvax.calculator"]  # `curvax.calculator` the attribute is the factory

LJ = LennardJones(3.4, 0.0104, cutoff=8.0)


def _argon():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.1, seed=0)
    return atoms


def test_spec_cutoff_smaller_than_potential_cutoff():
    """A list built for a shorter cutoff would silently miss pairs: refuse, naming both cutoffs."""
    system = from_atoms(_argon())
    spec, _ = allocate(system, 3.0)
    with pytest.raises(ValueError, match=r"cutoff 3\.0 Å \(capacity \d+ edges\).*cutoff 8\.0 Å"):
        compute(LJ, system, spec=spec)
    calc = calculator(LJ)
    state = calc_module.NeighborState(spec, build(system, spec), system.positions, system.cell)
    with pytest.raises(ValueError, match="pairs would be missed"):
        calc.apply(system, state)


def test_capacity_too_small_is_flagged_or_reallocated():
    """Fixed capacity below the number of pairs: `calculate` flags it, `compute` re-allocates."""
    system = from_atoms(_argon())
    ref, good = compute(LJ, system)
    small = dataclasses.replace(good, capacity=good.capacity // 4)
    calc = calculator(LJ)
    res, _ = calc.apply(system, calc_module.NeighborState(small, build(system, small), system.positions, system.cell))
    assert bool(res["overflow"])  # the (truncated) numbers come with the flag set
    assert not np.isclose(float(res["energy"]), float(ref["energy"]))  # ... and they are wrong
    res, spec = compute(LJ, system, spec=small)
    assert spec.capacity >= good.capacity
    np.testing.assert_allclose(res["energy"], ref["energy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=1e-12)


def test_persistent_overflow_raises(monkeypatch):
    """If re-allocation cannot catch up, `compute` raises, naming cutoff and capacity."""
    real = calc_module.neighbors.allocate

    def stingy(system, cutoff, capacity_multiplier=1.25, **kw):
        spec, graph = real(system, cutoff, capacity_multiplier, **kw)
        return dataclasses.replace(spec, capacity=4), graph

    monkeypatch.setattr(calc_module.neighbors, "allocate", stingy)
    with pytest.raises(RuntimeError, match=r"cutoff 8\.0 Å, capacity 4 edges.*pairs within 8\.0 Å > edge capacity 4"):
        compute(LJ, from_atoms(_argon()))


def test_unknown_element(nequix32):
    assert 84 not in nequix32.elements
    atoms = bulk("Po", "sc", a=3.35)
    with pytest.raises(ValueError, match=r"Po \(Z=84\) unknown to the model"):
        compute(nequix32, from_atoms(atoms))
    with pytest.raises(ValueError, match=r"Po \(Z=84\)"):
        calculator(nequix32).init(from_atoms(atoms))
    atoms.calc = curvax.ase.Calculator(nequix32)
    with pytest.raises(ValueError, match=r"Po \(Z=84\)"):
        atoms.get_potential_energy()


def test_degenerate_cell_with_pbc():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.7]], pbc=True)  # no cell
    with pytest.raises(ValueError, match=r"Ar2 has pbc=.*degenerate cell"):
        from_atoms(atoms)
    atoms.calc = curvax.ase.Calculator(LJ)
    with pytest.raises(ValueError, match="degenerate cell"):
        atoms.get_potential_energy()
    flat = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.7]], cell=[[5, 0, 0], [0, 5, 0], [5, 5, 0]], pbc=True)
    with pytest.raises(ValueError, match="degenerate"):
        from_atoms(flat)
    system = from_atoms(_argon())
    with pytest.raises(ValueError, match="degenerate"):  # a System built by hand
        allocate(system._replace(cell=system.cell.at[2].set(0.0)), 8.0)


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope.nqx"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_potential(str(missing))
    with pytest.raises(FileNotFoundError, match="unknown model 'no-such-model'"):
        load_potential("no-such-model")


def test_corrupt_model_file(tmp_path):
    garbage = tmp_path / "garbage.nqx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=rf"{garbage}: not a Nequix \.nqx file"):
        load_potential(str(garbage))
    if not NEQUIX_MP.is_file():
        pytest.skip(f"{NEQUIX_MP} missing")
    # a valid config line followed by truncated weights
    data = NEQUIX_MP.read_bytes()
    truncated = tmp_path / "truncated.nqx"
    truncated.write_bytes(data[: data.index(b"\n") + 1 + 1000])
    with pytest.raises(ValueError, match=rf"{truncated}: could not read Nequix weights"):
        load_potential(str(truncated))


def test_nan_positions():
    atoms = _argon()
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        allocate(from_atoms(atoms), 8.0)
    with pytest.raises(ValueError, match=r"atom\(s\) \[2\] are NaN"):
        compute(LJ, from_atoms(atoms))
    # the ASE calculator re-uses its neighbour spec after the first call: still refused
    good = _argon()
    good.calc = curvax.ase.Calculator(LJ)
    good.get_potential_energy()
    good.positions[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"atom\(s\) \[1\] are NaN or inf"):
        good.get_potential_energy()
