"""Phonon properties from AD force constants: thermodynamics vs the harmonic formulas, the
classical limit, frequency scaling, imaginary-mode detection, relax-then-phonons, and the CLI on
a DFT set (Nequix MP vs DFT: ν_max, S, F, Cv at 300 K and their errors)."""
import json

import numpy as np
import pytest
from ase.build import bulk
from conftest import NEQUIX_MP, PHONONS

from curvax.phonons.fc2 import force_constants_from_atoms
from curvax.phonons.properties import IMAGINARY_THRESHOLD_THZ, compare, phonon_properties
from curvax.phonons.plots import plot_bands_dos
from curvax.relax.ase import relax_atoms
from curvax.potentials import Morse

KB = 8.617333262e-5          # eV/K
HBAR_THZ = 4.135667696e-3    # h [eV/THz]: E = h ν
NA_EV_KJ = 96.48533212       # eV per particle -> kJ/mol
R = 8.314462618              # J/K/mol


@pytest.fixture(scope="module")
def morse():
    """Morse pair potential, r0 = 2.55 Å; inflection point r0(1 + ln2/ρ0) = 2.84 Å; cutoff 4.6 Å."""
    return Morse(epsilon=0.4, r0=2.55, rho0=6.0, rcut1=1.3, rcut2=1.8)


@pytest.fixture(scope="module")
def fcc(morse):
    """fcc, nearest neighbours at r0 (stable), 1-atom primitive, 3×3×3 supercell."""
    phonon, _ = force_constants_from_atoms(bulk("Cu", "fcc", a=2.55 * 2 ** 0.5), [3, 3, 3], morse)
    return phonon


def _harmonic(freqs, weights, t):
    """F [kJ/mol], S, Cv [J/K/mol] per mole of primitive cells from mesh ν [THz] (formulas of
    `curvax.phonons`), independent of phonopy's implementation. Constants are CODATA 2018;
    phonopy's differ in the 6th digit, hence rel=1e-5 in the comparison."""
    keep = freqs > 1e-3                           # drops the three Γ acoustic modes (ν ≈ 1e-7)
    e = HBAR_THZ * freqs[keep]
    w = np.broadcast_to(weights[:, None], freqs.shape)[keep] / weights.sum()
    x = e / (KB * t)
    f = (w * (e / 2 + KB * t * np.log1p(-np.exp(-x)))).sum() * NA_EV_KJ
    s = (w * (-np.log1p(-np.exp(-x)) + x / np.expm1(x))).sum() * R
    cv = (w * x ** 2 * np.exp(x) / np.expm1(x) ** 2).sum() * R
    return f, s, cv


def test_thermal_properties_match_harmonic_formulas(fcc):
    props = phonon_properties(fcc, temperature=[100.0, 300.0], mesh=[8, 8, 8])
    freqs, weights = np.asarray(fcc.mesh.frequencies), np.asarray(fcc.mesh.weights)
    assert props["mesh"] == [8, 8, 8]
    assert props["max_frequency"] == pytest.approx(freqs.max())
    assert 1.0 < props["max_frequency"] < 20.0
    for k, t in enumerate((100.0, 300.0)):
        f, s, cv = _harmonic(freqs, weights, t)
        assert props["temperatures"][k] == t
        assert props["free_energy"][k] == pytest.approx(f, rel=1e-5)
        assert props["entropy"][k] == pytest.approx(s, rel=1e-5)
        assert props["heat_capacity"][k] == pytest.approx(cv, rel=1e-5)
    assert not props["has_imaginary"] and props["n_imaginary"] == 0


def test_dulong_petit_limit(fcc):
    """Cv → 3R per atom for k_B T ≫ h ν_max; per mode c(x) = x²eˣ/(eˣ−1)² ∈ [1 − x²/12, 1],
    x = hν/k_B T. The three Γ acoustic modes (1 of the Nq = 216 q points) are excluded."""
    t = 3000.0
    props = phonon_properties(fcc, temperature=t, mesh=[6, 6, 6])
    xmax = HBAR_THZ * props["max_frequency"] / (KB * t)
    classical = 3 * R * (1 - 1 / 216)
    assert classical * (1 - xmax ** 2 / 12) <= props["heat_capacity"] <= classical


def test_scaled_force_constants_scale_frequencies(fcc):
    """Φ → 1.21 Φ gives ν → 1.1 ν: `compare` reports a 10 % ν_max error and Cv, S lower for the
    stiffer crystal; identical inputs give zero error."""
    import phonopy

    ref = phonon_properties(fcc, 300.0, mesh=[6, 6, 6])
    stiff = phonopy.Phonopy(fcc.unitcell, supercell_matrix=fcc.supercell_matrix,
                            primitive_matrix=fcc.primitive_matrix)
    stiff.force_constants = 1.21 * fcc.force_constants
    props = phonon_properties(stiff, 300.0, mesh=[6, 6, 6])
    err = compare(props, ref)
    assert err["max_frequency"]["rel_error"] == pytest.approx(0.1, abs=1e-9)
    assert err["max_frequency"]["error"] > 0
    assert err["entropy"]["error"] < 0 and err["heat_capacity"]["error"] < 0
    assert err["free_energy"]["error"] > 0  # higher zero-point energy, less entropy
    zero = compare(ref, ref)
    assert all(zero[k]["abs_error"] == 0.0 for k in ("max_frequency", "entropy", "free_energy",
                                                      "heat_capacity"))


def test_imaginary_modes_detected(morse):
    """fcc stretched so that neighbours sit beyond the Morse inflection point (φ'' < 0): the
    lattice is dynamically unstable; at r0 it is stable."""
    phonon, _ = force_constants_from_atoms(bulk("Cu", "fcc", a=3.0 * 2 ** 0.5), [2, 2, 2], morse)
    props = phonon_properties(phonon, 300.0, mesh=[6, 6, 6])
    assert props["has_imaginary"]
    assert props["min_frequency"] < IMAGINARY_THRESHOLD_THZ
    assert props["n_imaginary"] > 0


def test_relax_then_phonons(morse):
    """Relax positions + cell of a strained, rattled fcc cell (FIRE + FrechetCellFilter): zero
    stress and forces, energy minimal under uniform scaling, then stable phonons by AD."""
    from curvax.ase import Calculator

    atoms = bulk("Cu", "fcc", a=3.8, cubic=True)
    atoms.rattle(0.02, seed=1)
    relaxed = relax_atoms(atoms, morse, fmax=1e-4)
    calc = Calculator(morse, capacity_multiplier=2.0)
    relaxed.calc = calc
    assert np.abs(relaxed.get_forces()).max() < 1e-4
    assert np.abs(relaxed.get_stress()).max() * relaxed.get_volume() < 1e-4 * 3
    e0 = relaxed.get_potential_energy()
    for s in (0.995, 1.005):
        b = relaxed.copy()
        b.set_cell(relaxed.cell * s, scale_atoms=True)
        b.calc = calc
        assert b.get_potential_energy() > e0
    a = relaxed.cell.lengths()
    assert np.allclose(a, a[0], rtol=1e-4) and abs(a[0] - 3.8) > 0.05
    phonon, res = force_constants_from_atoms(relaxed, [1, 1, 1], morse, primitive_matrix="F")
    assert res.n_atoms == 4
    props = phonon_properties(phonon, 300.0, mesh=[6, 6, 6])
    assert not props["has_imaginary"]
    with pytest.raises(ValueError, match="not converged"):
        relax_atoms(atoms, morse, fmax=1e-6, steps=2)


def test_plot_overlay(fcc, tmp_path):
    import phonopy

    other = phonopy.Phonopy(fcc.unitcell, supercell_matrix=fcc.supercell_matrix,
                            primitive_matrix=fcc.primitive_matrix)
    other.force_constants = 0.8 * fcc.force_constants
    png = plot_bands_dos({"ref": fcc, "soft": other}, tmp_path / "b.png", mesh=[6, 6, 6])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_structure_errors(tmp_path):
    """STRUCTURE: ASE-readable file (non-periodic refused) or a phonopy yaml; clear errors."""
    from ase.build import molecule
    from ase.io import write

    from curvax.cli import main
    from curvax.cli.phonons import _read_structure

    write(tmp_path / "POSCAR", bulk("NaCl", "rocksalt", a=5.6), format="vasp")
    atoms, smat, pmat = _read_structure(tmp_path / "POSCAR")
    assert len(atoms) == 2 and smat is None
    atoms, smat, _ = _read_structure(PHONONS / "Cr" / "phonopy_disp.yaml")
    assert len(atoms) == 2 and np.array_equal(smat, 2 * np.eye(3))
    write(tmp_path / "h2o.xyz", molecule("H2O"))
    with pytest.raises(ValueError, match="h2o.xyz.*periodic"):
        _read_structure(tmp_path / "h2o.xyz")
    assert main(["phonons", str(tmp_path / "nope.cif"), "--model", str(NEQUIX_MP), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()   # bad input creates no output folder


@pytest.mark.skipif(not (NEQUIX_MP.is_file() and (PHONONS / "Cr").is_dir()),
                    reason="Nequix MP or the Cr DFT set missing")
def test_cli_compare_dft(tmp_path, capsys, monkeypatch, nequix64):
    """The cheapest DFT set (bcc Cr, 16-atom 2×2×2 supercell, PBEsol, one displacement): FC2 of
    Nequix MP by AD on the DFT structure and supercell matrix, compare ν_max, S, F, Cv at 300 K.
    (The relax-then-phonons path is `test_relax_then_phonons`; --relax only adds that call.)
    Model-vs-DFT values are physics with loose bounds (Nequix MP is a PBE-level universal
    model, the DFT is PBEsol); the reported errors must equal model − DFT of the DFT set.
    The session's float64 Nequix is handed to the CLI to share its load (~10-25 s)."""
    import curvax.cli.phonons
    from curvax.cli import main
    from curvax.phonons.data import load_phonopy_dataset

    loaded = []
    monkeypatch.setattr(curvax.cli.phonons, "load_potential",
                        lambda name, dtype=None: loaded.append(name) or nequix64)
    out = tmp_path / "out"
    rc = main(["phonons", str(PHONONS / "Cr" / "phonopy_disp.yaml"), "--model", str(NEQUIX_MP),
               "--compare-dft", str(PHONONS / "Cr" / "phonopy_disp.yaml"),
               str(PHONONS / "Cr" / "FORCE_SETS"), "--mesh", "8", "8", "8", "--out", str(out)])
    assert rc == 0 and loaded == [str(NEQUIX_MP)]
    printed = capsys.readouterr().out
    assert "1 HVPs" in printed and "max_frequency" in printed
    blob = json.loads((out / "properties.json").read_text())
    model, dft, err = blob["properties"]["model"], blob["properties"]["dft"], blob["errors"]
    ref = phonon_properties(load_phonopy_dataset(PHONONS / "Cr"), 300.0, mesh=[8, 8, 8])
    for k in ("max_frequency", "entropy", "free_energy", "heat_capacity"):
        assert dft[k] == pytest.approx(ref[k], rel=1e-10)
        assert err[k]["error"] == pytest.approx(model[k] - dft[k], abs=1e-12)
        assert err[k]["model"] == model[k] and err[k]["dft"] == dft[k]
        assert k in (out / "properties.txt").read_text()
    assert model["temperatures"] == 300.0
    assert not model["has_imaginary"] and not dft["has_imaginary"]
    assert err["max_frequency"]["rel_error"] < 0.2
    assert err["heat_capacity"]["rel_error"] < 0.05   # near Dulong–Petit at 300 K for both
    assert abs(err["entropy"]["error"]) < 6.0          # J/K/mol
    assert (out / "bands_dos.png").read_bytes()[:4] == b"\x89PNG"
    # the written phonopy yaml carries the model's force constants
    import phonopy

    ph = phonopy.load(str(out / "phonopy_model.yaml"), is_compact_fc=False, log_level=0)
    assert ph.force_constants.shape == (16, 16, 3, 3)
    assert np.abs(ph.force_constants.sum(axis=1)).max() < 1e-8 * np.abs(ph.force_constants).max()
    assert phonon_properties(ph, 300.0, mesh=[8, 8, 8])["max_frequency"] == pytest.approx(
        model["max_frequency"], rel=1e-6)


def test_batched_unit_cell_relaxation_matches_ase(morse):
    """The evaluation's batched JAX FIRE (`relax.driver.relax_unit_cells`, positions + cell) ends
    where ASE FIRE + FrechetCellFilter ends, for cells of different sizes in one batch; an
    unconverged relaxation comes back as an error, not as a structure."""
    from curvax.relax.driver import relax_unit_cells

    cells = [bulk("Cu", "fcc", a=3.8, cubic=True), bulk("Cu", "fcc", a=3.5)]
    cells[0].rattle(0.02, seed=1)
    out = relax_unit_cells(morse, cells, fmax=1e-4, steps=2000)
    for start, got in zip(cells, out):
        ref = relax_atoms(start, morse, fmax=1e-4)
        assert not isinstance(got, Exception), got
        np.testing.assert_allclose(got.get_volume() / len(got), ref.get_volume() / len(ref), rtol=1e-3)
    assert abs(out[0].get_volume() / 4 - 3.8 ** 3 / 4) > 0.5  # it did move
    bad = relax_unit_cells(morse, cells, fmax=1e-6, steps=2)
    assert all(isinstance(b, ValueError) and "not converged" in str(b) for b in bad)
