"""phonondb archives load in memory into phonopy with the same DFT force constants as phonopy
reading the unpacked files; the split by formula is disjoint, deterministic and keeps the test
materials fixed; bad archives fail with the file named."""
import tarfile
from pathlib import Path
from fractions import Fraction

import numpy as np
import pytest
from conftest import SHARED

from curvax.finetune.pft import phonondb_split
from curvax.phonons.data import dataset_name, list_datasets, load_phonopy_dataset, phonondb_entries

PHONONDB = SHARED / "data" / "phonondb"
pytestmark = pytest.mark.skipif(not (PHONONDB / "manifest.csv").is_file(), reason=f"{PHONONDB} missing")


def _small_insulator():
    return next(e for e in phonondb_entries(PHONONDB, 24) if e.formula == "NaBH4")


def test_archive_equals_phonopy_on_the_unpacked_files(tmp_path):
    import phonopy

    entry = _small_insulator()
    ph = load_phonopy_dataset(entry.path)
    with tarfile.open(entry.path) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = next(tmp_path.iterdir())
    conf = {k.strip(): v.split() for k, _, v in (line.partition("=") for line in
                                                  (folder / "phonopy.conf").read_text().splitlines()) if v}
    dim = np.array(conf["DIM"], dtype=float)
    dim = np.diag(dim) if dim.size == 3 else dim.reshape(3, 3)
    prim = np.array([float(Fraction(x)) for x in conf["PRIMITIVE_AXIS"]], float).reshape(3, 3) if "PRIMITIVE_AXIS" in conf else "auto"
    ref = phonopy.load(unitcell_filename=str(folder / "POSCAR-unitcell"), supercell_matrix=dim.astype(int),
                       primitive_matrix=prim,
                       force_sets_filename=str(folder / "FORCE_SETS"), born_filename=str(folder / "BORN"),
                       symmetrize_fc=True, is_compact_fc=False, log_level=0)
    assert len(ph.supercell) == entry.n_supercell == len(ref.supercell)
    np.testing.assert_allclose(ph.force_constants, ref.force_constants, atol=1e-10)
    np.testing.assert_allclose(ph.primitive.cell, ref.primitive.cell, atol=1e-12)
    assert ph.nac_params is not None  # BORN read for an insulator
    np.testing.assert_allclose(ph.nac_params["born"], ref.nac_params["born"])
    # physical: acoustic sum rule, Γ acoustic modes ≈ 0, no instability at Γ for this material
    assert np.abs(ph.force_constants.sum(axis=1)).max() < 1e-8
    ph.run_qpoints([[0, 0, 0]])
    freqs = ph.qpoints.frequencies[0]
    assert np.abs(freqs[:3]).max() < 0.05 and freqs[3:].min() > 0.5
    assert dataset_name(entry.path) == entry.mp_id


def test_listing_and_bad_archive(tmp_path):
    assert len(list_datasets(PHONONDB)) == len(phonondb_entries(PHONONDB)) > 4000
    bad = tmp_path / "materials-id-1-x.tar.lzma"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="materials-id-1-x.tar.lzma: unreadable phonondb archive"):
        load_phonopy_dataset(bad)
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        phonondb_entries(tmp_path)


def test_split_by_formula_is_disjoint_and_fixed():
    a = phonondb_split(PHONONDB, 40, n_test=20, n_validation=8)
    b = phonondb_split(PHONONDB, 40, n_test=20, n_validation=8, n_train=50)
    assert a["test"] == b["test"] and a["validation"] == b["validation"]  # training size does not move them
    assert len(a["test"]) >= 20 and len(a["validation"]) >= 8 and 50 <= len(b["train"]) < 60
    entries = {e.path: e for e in phonondb_entries(PHONONDB, 40)}
    from curvax.finetune.pft import _reduced_formula

    formulas = {k: {_reduced_formula(entries[p].formula) for p in v} for k, v in a.items()}
    assert not formulas["test"] & formulas["train"] and not formulas["validation"] & formulas["train"]
    assert not formulas["test"] & formulas["validation"]
    assert len(a["train"]) + len(a["validation"]) + len(a["test"]) == len(entries)
    # the materials of ../shared/data/phonons are not in phonondb at all
    assert not {"NaCl", "MgO", "ZnO", "SnO2", "Cr"} & set().union(*formulas.values())


def test_split_draws_cheap_evaluation_materials():
    split = phonondb_split(PHONONDB, 40, n_test=20, n_validation=8, eval_max_displacements=10)
    entries = {e.path: e for e in phonondb_entries(PHONONDB, 40)}
    for part in ("test", "validation"):
        assert split[part] and all(entries[p].n_displacements <= 10 for p in split[part])
    assert max(entries[p].n_displacements for p in split["train"]) > 10  # the rest train
    assert len(split["train"]) + len(split["validation"]) + len(split["test"]) == len(entries)


def test_split_evaluates_larger_supercells_than_it_trains_on():
    split = phonondb_split(PHONONDB, 40, n_test=10, n_validation=6, eval_max_atoms=64)
    entries = {e.path: e for e in phonondb_entries(PHONONDB, 64)}
    from curvax.finetune.pft import _reduced_formula

    assert max(entries[p].n_supercell for p in split["test"] + split["validation"]) > 40
    assert max(entries[p].n_supercell for p in split["train"]) <= 40
    held = {_reduced_formula(entries[p].formula) for p in split["test"] + split["validation"]}
    assert not held & {_reduced_formula(entries[p].formula) for p in split["train"]}
    # the same held-out materials as a split over ≤ 64-atom supercells (a fixed order of formulas)
    wide = phonondb_split(PHONONDB, 64, n_test=10, n_validation=6)
    assert split["test"] == wide["test"] and split["validation"] == wide["validation"]


def test_unitcell_training_split_keeps_the_held_out_materials():
    """phonon_cell: unitcell trains on unit cells ≤ max_atoms (any supercell), the same test and
    validation materials as the supercell split, no held-out formula among the training ones."""
    from curvax.finetune.pft import _reduced_formula

    sup = phonondb_split(PHONONDB, 40, n_test=10, n_validation=6, eval_max_atoms=64)
    uni = phonondb_split(PHONONDB, 8, n_test=10, n_validation=6, eval_max_atoms=64, train_cell="unitcell")
    assert uni["test"] == sup["test"] and uni["validation"] == sup["validation"]
    entries = {e.path: e for e in phonondb_entries(PHONONDB)}
    assert uni["train"] and max(entries[p].n_unitcell for p in uni["train"]) <= 8
    assert max(entries[p].n_supercell for p in uni["train"]) > 64  # supercells of any size
    held = {_reduced_formula(entries[p].formula) for p in uni["test"] + uni["validation"]}
    assert not held & {_reduced_formula(entries[p].formula) for p in uni["train"]}
    with pytest.raises(ValueError, match="train_cell must be one of"):
        phonondb_split(PHONONDB, 8, 1, 1, train_cell="primitive")


def test_unitcell_alone_equals_the_full_load_and_feeds_relaxation_data():
    """`phonondb_unitcell` reads only POSCAR-unitcell: the same crystal as the full phonopy load;
    a phonondb folder is relaxation data (its PBEsol unit cells, ≤ max_atoms, manifest order)."""
    from curvax.phonons.convert import phonopy_to_atoms
    from curvax.phonons.data import phonondb_unitcell
    from curvax.relax.data import load_dft_relaxed

    entry = _small_insulator()
    atoms, ref = phonondb_unitcell(entry.path), phonopy_to_atoms(load_phonopy_dataset(entry.path).unitcell)
    assert len(atoms) == entry.n_unitcell and list(atoms.numbers) == list(ref.numbers)
    np.testing.assert_allclose(atoms.cell.array, ref.cell.array, atol=1e-10)
    np.testing.assert_allclose(atoms.get_scaled_positions(), ref.get_scaled_positions(), atol=1e-10)
    records = load_dft_relaxed(PHONONDB, max_atoms=5, limit=5)
    first = [e for e in phonondb_entries(PHONONDB) if e.n_unitcell <= 5][:5]
    assert [r.material_id for r in records] == [e.mp_id for e in first]
    assert all(len(r.atoms) <= 5 and np.isnan(r.energy) for r in records)
    with pytest.raises(ValueError, match="no phonondb unit cells with ≤ 0 atoms"):
        load_dft_relaxed(PHONONDB, max_atoms=0)


def test_a_folder_without_manifest_is_refused_naming_it(tmp_path):
    from curvax.relax.data import load_dft_relaxed

    with pytest.raises(FileNotFoundError, match="manifest.csv: missing"):
        load_dft_relaxed(tmp_path)


LOADER_SCRIPT = r'''
import sys
import numpy as np
from curvax.finetune.pft import load_phonon_training_set
from curvax.phonons.data import dataset_loader, phonondb_entries
from curvax.potentials import LennardJones

from jax._src import xla_bridge
from curvax.config import load_config
from curvax.finetune.pft import FinetuneConfig

load_config(sys.argv[3], FinetuneConfig)  # checking the main job's config starts no JAX backend
assert not xla_bridge.backends_are_initialized()
paths = [e.path for e in phonondb_entries(sys.argv[1]) if e.n_unitcell <= 8][:12] + [sys.argv[2]]
with dataset_loader(2) as loader:  # before any JAX computation: two forked reader processes
    assert loader is not None
    lj = LennardJones(sigma=2.2, epsilon=0.1, cutoff=5.5, smooth=True)
    names, buckets = load_phonon_training_set(paths, lj.cutoff, 8, lj, cell="unitcell", n_buckets=2, loader=loader)
ref_names, ref = load_phonon_training_set(paths, lj.cutoff, 8, lj, cell="unitcell", n_buckets=2)
assert names == ref_names and len(names) == 13, (names, ref_names)
for b, r in zip(buckets, ref, strict=True):
    np.testing.assert_array_equal(b.index, r.index)
    np.testing.assert_array_equal(b.fc, r.fc)
    np.testing.assert_array_equal(np.asarray(b.structures.system.positions), np.asarray(r.structures.system.positions))
with dataset_loader(2) as late:  # JAX's backend runs now: forking is unsafe, read in this process
    assert late is None
print("OK", len(names))
'''


def test_reader_processes_load_the_same_training_set():
    """`dataset_loader` + `load_phonon_training_set(loader=)`: phonondb archives read in two
    forked processes give the same structures, order and force constants as one process; once
    JAX's backend has started the loader declines (None); loading the main job's config does not
    start it (else `finetune.pft.run` could never fork its readers). In a subprocess: pytest's
    own process has started JAX."""
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[2] / "configs" / "pft-nequix-mp.yaml"
    out = subprocess.run([sys.executable, "-c", LOADER_SCRIPT, str(PHONONDB), str(SHARED / "data" / "phonons" / "Cr"),
                          str(config)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().startswith("OK"), out.stdout
