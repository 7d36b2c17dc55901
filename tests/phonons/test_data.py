"""DFT phonon data sets load into phonopy with physical force constants; broken files fail loudly."""
import shutil

import numpy as np
import pytest
from conftest import PHONONS

from curvax.phonons.data import dataset_name, list_datasets, load_phonopy_dataset

pytestmark = pytest.mark.skipif(not PHONONS.is_dir(), reason=f"{PHONONS} missing")

DATASETS = list_datasets(PHONONS) if PHONONS.is_dir() else []


def _sg_permutations(ph):
    from phonopy.structure.cells import compute_all_sg_permutations

    sc = ph.supercell
    ops = ph.symmetry.symmetry_operations
    perms = compute_all_sg_permutations(sc.scaled_positions, ops["rotations"], ops["translations"],
                                        np.array(sc.cell.T, order="C"), 1e-5, sc.numbers)
    return ops["rotations"], perms


def test_all_shipped_sets_listed():
    names = {dataset_name(p) for p in DATASETS}
    assert {"NaCl", "MgO", "ZnO", "SnO2", "Cr", "SrTiO3", "TiPN3", "Zr3N4", "Pc", "P-3m1"} <= names
    assert len(DATASETS) >= 8 + 21


@pytest.mark.parametrize("path", DATASETS, ids=[dataset_name(p) for p in DATASETS])
def test_dataset_force_constants_physical(path):
    """Full-layout FC in eV/Å²: acoustic sum rule Σ_j Φ_ij = 0, Φ_ij = Φ_jiᵀ, space-group
    invariance Φ(σi,σj) = R Φ(i,j) Rᵀ, and they reproduce the DFT forces F = -Φ·u (harmonic fit)."""
    ph = load_phonopy_dataset(path)
    fc = ph.force_constants
    n = len(ph.supercell)
    assert fc.shape == (n, n, 3, 3)
    scale = np.abs(fc).max()
    assert 1.0 < scale < 1e3  # eV/Å²: real bonds, not Ry/bohr² nor garbage
    assert np.abs(fc.sum(axis=1)).max() < 1e-10 * scale
    assert np.abs(fc - fc.transpose(1, 0, 3, 2)).max() < 1e-10 * scale
    # space-group symmetry (a few operations, Cartesian rotation R_c = L R L⁻¹)
    rots, perms = _sg_permutations(ph)
    lat = ph.supercell.cell.T
    for k in range(0, len(rots), max(1, len(rots) // 6)):
        rc = lat @ rots[k] @ np.linalg.inv(lat)
        p = perms[k]
        rotated = np.einsum("ab,ijbc,dc->ijad", rc, fc, rc)
        assert np.abs(fc[np.ix_(p, p)] - rotated).max() < 1e-6 * scale
    # DFT forces of the displaced supercells are reproduced by the fitted harmonic FC. Not for
    # phonopy's space-group test structures: several are not relaxed (forces of ±u differ by
    # more than their mean), so residual forces dominate the small displacement forces there.
    data = ph.dataset
    if "first_atoms" in data and not path.name.startswith("POSCAR_"):
        res = num = 0.0
        for d in data["first_atoms"]:
            pred = -np.einsum("jab,a->jb", fc[d["number"]], d["displacement"])
            f = np.asarray(d["forces"])
            f = f - f.mean(0)  # drift (non-zero net force of the DFT run) is not harmonic
            res += ((pred - f) ** 2).sum()
            num += (f ** 2).sum()
        assert np.sqrt(res / num) < 0.1


def test_supercell_inferred_for_spacegroup_sets():
    """POSCAR_<sg> sets carry no supercell matrix; the inferred ones match those phonopy's own
    tests use (test_irreps: Pc 2×2×2, P222_1 2×2×1, P-42_1m 2×2×3, P-3m1 3×3×2, P-6 1×1×3)."""
    known = {"Pc": (2, 2, 2), "P222_1": (2, 2, 1), "P-42_1m": (2, 2, 3), "P-3m1": (3, 3, 2), "P-6": (1, 1, 3)}
    sg = PHONONS / "spacegroups"
    for name, dim in known.items():
        ph = load_phonopy_dataset(sg / f"POSCAR_{name}")
        assert np.array_equal(ph.supercell_matrix, np.diag(dim)), name


@pytest.fixture
def zno_copy(tmp_path):
    dst = tmp_path / "ZnO"
    shutil.copytree(PHONONS / "ZnO", dst)
    return dst


def test_missing_forces_file(zno_copy, tmp_path):
    (zno_copy / "FORCE_SETS").unlink()
    with pytest.raises(FileNotFoundError, match="FORCE_SETS"):
        load_phonopy_dataset(zno_copy)
    sg = tmp_path / "sg"
    sg.mkdir()
    shutil.copy(PHONONS / "spacegroups" / "POSCAR_P-6", sg)
    with pytest.raises(FileNotFoundError, match="FORCE_SETS_P-6"):
        load_phonopy_dataset(sg / "POSCAR_P-6")


def test_supercell_size_mismatch(zno_copy):
    lines = (zno_copy / "FORCE_SETS").read_text().splitlines()
    assert lines[0].strip() == "32"
    # drop the last atom of every displacement block: a 31-atom FORCE_SETS
    out, k = ["31", lines[1]], 2
    while k < len(lines):
        if not lines[k].strip():
            out.append(lines[k]); k += 1
            out += lines[k:k + 2]  # atom number, displacement
            out += lines[k + 2:k + 2 + 31]
            k += 2 + 32
        else:
            k += 1
    (zno_copy / "FORCE_SETS").write_text("\n".join(out) + "\n")
    with pytest.raises(ValueError, match=r"FORCE_SETS: supercell size mismatch.*31.*32"):
        load_phonopy_dataset(zno_copy)


def test_nan_force(zno_copy):
    lines = (zno_copy / "FORCE_SETS").read_text().splitlines()
    lines[6] = "  nan  0.0  0.0"
    (zno_copy / "FORCE_SETS").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"FORCE_SETS.*non-finite"):
        load_phonopy_dataset(zno_copy)


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="phonopy_disp.yaml"):
        load_phonopy_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_phonopy_dataset(tmp_path / "nothing")
