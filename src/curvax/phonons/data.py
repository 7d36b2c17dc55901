"""DFT finite-displacement phonon data sets as `phonopy.Phonopy` objects with force constants.

Three layouts of phonopy data are read (all in phonopy's units for VASP: Å, eV/Å, AMU):

* a directory with ``phonopy_disp.yaml`` + ``FORCE_SETS`` (+ ``BORN``: non-analytical
  correction parameters, attached when present);
* a phonopy parameter file ``phonopy_params*.yaml[.xz]`` / ``phonopy_*.yaml[.xz]`` that holds
  the structure, supercell matrix and displacements with forces (and possibly NAC);
* ``POSCAR_<sg>`` + ``FORCE_SETS_<sg>`` (phonopy's space-group test set). These carry no
  supercell matrix; it is inferred (`infer_supercell_matrix`);
* a phonondb archive ``*.tar.lzma`` (Kyoto phonondb, A. Togo: one folder with
  ``POSCAR-unitcell``, ``phonopy.conf`` (``DIM``, ``PRIMITIVE_AXIS``), ``FORCE_SETS`` and
  ``BORN`` for insulators), read in memory — no unpacking; a folder holding
  ``manifest.csv`` and ``materials/`` is a phonondb (`phonondb_entries`).

Every loader returns a `phonopy.Phonopy` whose ``force_constants`` are produced from the DFT
forces by phonopy's least-squares solver with symmetrisation (translational invariance / acoustic
sum rule and index permutation), in the *full* layout ``(Ns, Ns, 3, 3)``, eV/Å²:

    Φ_{iα,jβ} = ∂²E / ∂u_iα ∂u_jβ ≈ -F_jβ(u_i) / u_iα.

Input is validated on load; a bad file raises `FileNotFoundError` / `ValueError` naming the file
and the problem (missing forces file, supercell-size mismatch, non-finite forces or force
constants) — never a silent wrong number.

Stable API (used by phonon fine-tuning and evaluation):
    load_phonopy_dataset(path) -> phonopy.Phonopy
    list_datasets(root) -> list[Path]
    with dataset_loader() as loader: map_datasets(fn, paths, loader)   # many sets, side by side
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curvax.phonons.convert import phonopy_to_atoms
from curvax.system import from_atoms
from curvax.validation import check_system

__all__ = ["load_phonopy_dataset", "list_datasets", "infer_supercell_matrix", "dataset_name",
           "phonondb_entries", "PhonondbEntry", "phonondb_unitcell", "dataset_loader", "map_datasets"]

_PARAMS_RE = re.compile(r"^phonopy_.*\.yaml(\.xz)?$")
_DISP_NAMES = ("phonopy_disp.yaml", "phonopy_disp.yaml.xz")


def list_datasets(root) -> list[Path]:
    """All loadable data sets under `root` (sorted): directories holding ``phonopy_disp.yaml``,
    phonopy parameter files ``phonopy_*.yaml[.xz]`` (not ``phonopy_disp.yaml``), and
    ``POSCAR_<sg>`` files that have a sibling ``FORCE_SETS_<sg>``. Each entry is a valid
    argument of `load_phonopy_dataset`."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such phonon data directory")
    if (root / "manifest.csv").is_file():
        return [e.path for e in phonondb_entries(root)]
    found: list[Path] = []
    for p in sorted(root.rglob("*")):
        if p.is_dir() and any((p / n).is_file() for n in _DISP_NAMES):
            found.append(p)
        elif p.is_file() and _PARAMS_RE.match(p.name) and not p.name.startswith("phonopy_disp"):
            found.append(p)
        elif p.is_file() and p.name.startswith("POSCAR_"):
            if (p.parent / ("FORCE_SETS_" + p.name[len("POSCAR_"):])).is_file():
                found.append(p)
        elif p.is_file() and p.name.endswith(".tar.lzma"):
            found.append(p)
    return found


@contextlib.contextmanager
def dataset_loader(workers: int | None = None):
    """Context manager giving a pool of `workers` processes (default: every CPU this process may
    use) that read DFT data sets side by side for `map_datasets` — or None (read in this
    process) where a pool cannot help or is unsafe: one CPU, not Linux, or JAX's backend already
    started here (a forked child would inherit the locks of its threads but not the threads). So
    enter it before the first JAX computation; the workers are forked then, and on leaving (also
    by an error) reads not yet started are cancelled and the workers exit.
    Reading a phonondb archive is single-threaded Python (phonopy's symmetry search and force
    constants): the main job's 424 archives take 65 s in one process, 35 s in two (2-core CPU)."""
    from jax._src import xla_bridge  # no public query for "has the backend started" (JAX 0.10)

    n = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if n < 2 or not sys.platform.startswith("linux") or xla_bridge.backends_are_initialized():
        yield None  # (fork elsewhere: unavailable, or unsafe with macOS's libraries)
        return
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"))
    try:
        pool.submit(int).result()  # with "fork" the pool starts every worker at its first task: now
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def map_datasets(fn, paths, loader=None):
    """fn(path) for each path, in order, as an iterator: each result as soon as it is read, so a
    caller can reject a bad data set before the rest are read. Computed by the processes of
    `loader` (`dataset_loader`) when given; an error raised by `fn` is raised here as in a loop.
    `fn` and its results must pickle (a module-level function returning numpy arrays /
    ase.Atoms)."""
    paths = list(paths)
    if loader is None or len(paths) < 2:
        return map(fn, paths)
    return loader.map(fn, paths, chunksize=4)


def dataset_name(path) -> str:
    """Short name of a data set: directory name, ``<sg>`` of ``POSCAR_<sg>``, or the formula
    part of ``phonopy_params_<name>.yaml.xz``."""
    p = Path(path)
    if p.is_dir():
        return p.name
    name = p.name
    if name.endswith(".tar.lzma"):  # phonondb: materials-id-23330-naclo3-p2-13-198 -> mp-23330
        m = re.match(r"materials-id-(\d+)-", name)
        return f"mp-{m.group(1)}" if m else name[: -len(".tar.lzma")]
    if name.startswith("POSCAR_"):
        return name[len("POSCAR_"):]
    name = re.sub(r"\.yaml(\.xz)?$", "", name)
    return re.sub(r"^phonopy_(params_)?", "", name)


def load_phonopy_dataset(path, symmetrize_fc: bool = True, is_nac: bool = True, log_level: int = 0,
                         force_sets=None):
    """Load one DFT phonon data set as a `phonopy.Phonopy` with force constants produced.

    path: a directory with ``phonopy_disp.yaml`` + ``FORCE_SETS`` (e.g. ``.../phonons/NaCl``), the
    ``phonopy_disp.yaml`` file itself, a parameter file ``phonopy_*.yaml[.xz]``, or a
    ``POSCAR_<sg>`` with its ``FORCE_SETS_<sg>`` alongside. `force_sets`: the forces file of a
    displacement yaml when it is not ``FORCE_SETS`` beside it.

    Returns a Phonopy whose ``force_constants`` have the full layout (Ns, Ns, 3, 3) in eV/Å²,
    symmetrised by phonopy (``symmetrize_fc``: acoustic sum rule and Φ_ij = Φ_jiᵀ) unless
    disabled. NAC parameters (BORN) are attached when present and `is_nac`.
    """
    with warnings.catch_warnings():
        # phonopy ≥ 4 warns that primitive_matrix='auto' is its new default: intended here.
        warnings.filterwarnings("ignore", message=".*primitive_matrix defaulted.*")
        try:
            ph = _load(Path(path), symmetrize_fc, is_nac, log_level, force_sets)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as e:  # noqa: BLE001  (yaml, key, attribute, recursion errors of malformed files)
            raise ValueError(f"{path}: not a readable phonon data set ({type(e).__name__}: {e})") from None
    check_system(from_atoms(phonopy_to_atoms(ph.unitcell)), f"{path} (unit cell)")
    return ph


def _load(p: Path, symmetrize_fc: bool, is_nac: bool, log_level: int, force_sets=None):
    import phonopy

    if not p.exists():
        raise FileNotFoundError(f"{p}: no such phonon data set")
    kw = dict(is_nac=is_nac, symmetrize_fc=symmetrize_fc, is_compact_fc=False, produce_fc=False,
              log_level=log_level)
    if p.is_dir():
        disp = next((p / n for n in _DISP_NAMES if (p / n).is_file()), None)
        if disp is None:
            raise FileNotFoundError(f"{p}: directory has no phonopy_disp.yaml")
        p = disp
    if p.name.endswith(".tar.lzma"):
        ph, forces_file = _load_phonondb_archive(p, kw)
    elif p.name.startswith("POSCAR_"):
        ph, forces_file = _load_poscar_set(p, kw)
    elif p.name.startswith("phonopy_disp") or force_sets is not None:
        forces_file = Path(force_sets) if force_sets is not None else p.parent / "FORCE_SETS"
        if not forces_file.is_file():
            raise FileNotFoundError(f"{forces_file}: missing forces file for {p}")
        _check_force_sets(forces_file, _yaml_supercell_natoms(p, phonopy), p)
        born = p.parent / "BORN"
        ph = phonopy.load(str(p), force_sets_filename=str(forces_file),
                          born_filename=str(born) if (born.is_file() and is_nac) else None, **kw)
    elif p.suffix in (".yaml", ".xz", ".yml"):
        forces_file = p
        ph = phonopy.load(str(p), **kw)
    else:
        raise ValueError(f"{p}: not a phonon data set (expected a directory, phonopy yaml or POSCAR_<sg>)")
    _check_units(ph, p)
    _produce_and_validate(ph, forces_file, symmetrize_fc)
    return ph


# ----------------------------------------------------------------------------------------------


def _yaml_supercell_natoms(yaml_path: Path, phonopy) -> int:
    from phonopy.interface.phonopy_yaml import PhonopyYaml

    ph_yaml = PhonopyYaml()
    ph_yaml.read(str(yaml_path))
    if ph_yaml.supercell is None:
        raise ValueError(f"{yaml_path}: no supercell (or unit cell + supercell_matrix) in file")
    return len(ph_yaml.supercell)


def _read_force_sets(forces_file: Path) -> dict:
    from phonopy.file_IO import parse_FORCE_SETS

    try:
        return parse_FORCE_SETS(filename=str(forces_file))
    except Exception as exc:  # phonopy raises assorted errors on malformed files
        raise ValueError(f"{forces_file}: cannot parse FORCE_SETS ({exc})") from exc


def _check_force_sets(forces_file: Path, n_super: int, structure_file: Path) -> dict:
    """FORCE_SETS natom must equal the supercell size; forces must be finite."""
    data = _read_force_sets(forces_file)
    natom = int(data["natom"])
    if natom != n_super:
        raise ValueError(
            f"{forces_file}: supercell size mismatch: FORCE_SETS has {natom} atoms, "
            f"the supercell of {structure_file} has {n_super}")
    _check_dataset_finite(data, forces_file)
    return data


def _check_dataset_finite(data: dict, where) -> None:
    if "first_atoms" in data:
        for k, d in enumerate(data["first_atoms"]):
            if not (np.all(np.isfinite(d["forces"])) and np.all(np.isfinite(d["displacement"]))):
                raise ValueError(f"{where}: non-finite force or displacement in displacement {k + 1}")
    else:
        for key in ("forces", "displacements"):
            if key in data and not np.all(np.isfinite(np.asarray(data[key]))):
                raise ValueError(f"{where}: non-finite {key}")


def _check_units(ph, where) -> None:
    calc = ph.calculator
    if calc not in (None, "vasp"):
        raise ValueError(f"{where}: calculator {calc!r}: only VASP units (eV, Å) are supported")


def _produce_and_validate(ph, forces_file: Path, symmetrize_fc: bool) -> None:
    if ph.force_constants is None:
        data = ph.dataset
        if not data or ("first_atoms" not in data and "forces" not in data):
            raise ValueError(f"{forces_file}: no displacement forces or force constants in data set")
        if "first_atoms" in data and any("forces" not in d for d in data["first_atoms"]):
            raise ValueError(f"{forces_file}: displacements without forces")
        _check_dataset_finite(data, forces_file)
        ph.produce_force_constants()
        if symmetrize_fc:
            ph.symmetrize_force_constants()
    fc = ph.force_constants
    n = len(ph.supercell)
    if fc.shape[0] != n:  # compact FC stored in a params file: expand to full layout
        from phonopy.harmonic.force_constants import compact_fc_to_full_fc

        fc = compact_fc_to_full_fc(ph.primitive, fc)
        ph.force_constants = fc
    if fc.shape != (n, n, 3, 3):
        raise ValueError(f"{forces_file}: force constants of shape {fc.shape}, expected {(n, n, 3, 3)}")
    if not np.all(np.isfinite(fc)):
        raise ValueError(f"{forces_file}: non-finite force constants")


def _supercell_candidates(det: int):
    for a in range(1, det + 1):
        if det % a:
            continue
        for b in range(1, det // a + 1):
            if (det // a) % b == 0:
                yield (a, b, det // a // b)


def _force_spread(unitcell, diag, first_atoms) -> float:
    """Force-weighted mean distance ⟨r⟩ = Σ |F_j|² r_ij / Σ |F_j|² (displaced atom i excluded,
    minimum-image distance in the candidate supercell) [Å]. Forces from a displaced atom decay
    with distance, so the true supercell geometry gives the smallest spread."""
    from phonopy.structure.cells import get_supercell

    sc = get_supercell(unitcell, np.diag(diag))
    lat = np.asarray(sc.cell)
    frac = np.asarray(sc.scaled_positions)
    num = den = 0.0
    for d in first_atoms:
        i = d["number"]
        df = frac - frac[i]
        df -= np.rint(df)
        r = np.linalg.norm(df @ lat, axis=1)
        f2 = (np.asarray(d["forces"]) ** 2).sum(1)
        f2[i] = 0.0
        num += float((f2 * r).sum())
        den += float(f2.sum())
    return num / max(den, 1e-300)


def infer_supercell_matrix(unitcell, force_sets: dict, where="FORCE_SETS") -> np.ndarray:
    """Diagonal supercell matrix for a FORCE_SETS without one.

    det(M) = Ns / Nu must be an integer (Ns from FORCE_SETS, Nu atoms in the unit cell). Among
    the diagonal integer matrices of that determinant, pick the one whose geometry is
    consistent with the forces: the smallest force-weighted distance from the displaced atom
    (`_force_spread`), i.e. the large forces sit on near neighbours. The displaced atom indices
    must be images of unit-cell atoms at the origin (index multiple of det, phonopy ordering).
    Verified on phonopy's test set against the matrices used there.
    """
    nu = len(unitcell)
    ns = int(force_sets["natom"])
    if ns % nu:
        raise ValueError(f"{where}: {ns} supercell atoms is not a multiple of the {nu} unit-cell atoms")
    det = ns // nu
    first = force_sets.get("first_atoms")
    if not first:
        raise ValueError(f"{where}: no displacements")
    for d in first:
        if d["number"] % det:
            raise ValueError(f"{where}: displaced atom {d['number'] + 1} is not a unit-cell atom of a "
                             f"{det}-cell supercell in phonopy order")
    cands = list(_supercell_candidates(det))
    if len(cands) == 1:
        return np.diag(cands[0])
    scores = [(_force_spread(unitcell, c, first), c) for c in cands]
    scores.sort()
    return np.diag(scores[0][1])


def _load_poscar_set(poscar: Path, kw: dict):
    import phonopy
    from phonopy.interface.vasp import read_vasp

    sg = poscar.name[len("POSCAR_"):]
    forces_file = poscar.parent / f"FORCE_SETS_{sg}"
    if not forces_file.is_file():
        raise FileNotFoundError(f"{forces_file}: missing forces file for {poscar}")
    try:
        unitcell = read_vasp(str(poscar))
    except Exception as exc:
        raise ValueError(f"{poscar}: cannot read POSCAR ({exc})") from exc
    data = _read_force_sets(forces_file)
    _check_dataset_finite(data, forces_file)
    smat = infer_supercell_matrix(unitcell, data, where=forces_file)
    ph = phonopy.load(unitcell=unitcell, supercell_matrix=smat, primitive_matrix="auto", **kw)
    if len(ph.supercell) != int(data["natom"]):
        raise ValueError(f"{forces_file}: supercell size mismatch: FORCE_SETS has {data['natom']} atoms, "
                         f"the supercell of {poscar} has {len(ph.supercell)}")
    ph.dataset = data
    return ph, forces_file


# ---------------------------------------------------------------------------------- phonondb


class PhonondbEntry(NamedTuple):
    """One row of a phonondb `manifest.csv`."""

    path: Path  # the material's .tar.lzma
    mp_id: str
    formula: str
    spacegroup: int
    n_supercell: int  # atoms in the DFT supercell
    n_displacements: int
    n_unitcell: int  # atoms in the unit cell (POSCAR-unitcell)


def phonondb_entries(root, max_atoms: int | None = None) -> list[PhonondbEntry]:
    """The materials of a phonondb folder (`manifest.csv` + `materials/`), manifest order
    (by supercell size), optionally only those with ≤ `max_atoms` supercell atoms."""
    import csv

    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: missing (a phonondb folder holds manifest.csv and materials/)")
    out = []
    with open(manifest, newline="") as f:
        for k, row in enumerate(csv.DictReader(f)):
            try:
                e = PhonondbEntry(root / row["file"], row["mp_id"], row["formula"], int(row["spacegroup_number"]),
                                  int(row["n_supercell"]), int(row["n_displacements"]), int(row["n_unitcell"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{manifest}: row {k + 2}: {exc!r} (expected columns file, mp_id, formula, "
                                 f"spacegroup_number, n_unitcell, n_supercell, n_displacements)") from None
            if max_atoms is None or e.n_supercell <= max_atoms:
                out.append(e)
    return out


def _read_conf_matrix(text: str, key: str, where):
    for line in text.splitlines():
        k, _, v = line.partition("=")
        if k.strip().upper() == key:
            if v.strip().lower() == "auto":
                return "auto"
            try:
                vals = [_fraction(x) for x in v.split()]
            except ValueError:
                raise ValueError(f"{where}: cannot parse {key} = {v.strip()!r}") from None
            if len(vals) == 3:
                return np.diag(vals)
            if len(vals) == 9:
                return np.reshape(vals, (3, 3))
            raise ValueError(f"{where}: {key} needs 3 or 9 numbers, got {v.strip()!r}")
    return None


def _fraction(x: str) -> float:
    num, _, den = x.partition("/")
    return float(num) / float(den) if den else float(num)


def _read_phonondb_archive(path: Path, names, required) -> dict:
    """{file name: text} of the archive members named in `names` (read in memory); every name in
    `required` must be there."""
    import lzma
    import tarfile

    try:
        with tarfile.open(path) as tar:
            files = {Path(m.name).name: tar.extractfile(m).read().decode()
                     for m in tar.getmembers() if m.isfile() and Path(m.name).name in names}
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable phonondb archive ({type(exc).__name__}: {exc})") from None
    for need in required:
        if need not in files:
            raise ValueError(f"{path}: archive has no {need}")
    return files


def phonondb_unitcell(path):
    """The DFT-relaxed (PBEsol) unit cell of a phonondb archive (its POSCAR-unitcell) as
    `ase.Atoms` (Å), without reading the forces: the relaxed crystals of relaxation data."""
    import io

    from ase.io import read

    text = _read_phonondb_archive(Path(path), ("POSCAR-unitcell",), ("POSCAR-unitcell",))["POSCAR-unitcell"]
    try:
        atoms = read(io.StringIO(text), format="vasp")
    except Exception as exc:
        raise ValueError(f"{path}:POSCAR-unitcell: unreadable ({type(exc).__name__}: {exc})") from None
    check_system(from_atoms(atoms), f"{path}:POSCAR-unitcell")
    return atoms


def _load_phonondb_archive(path: Path, kw: dict):
    """Read POSCAR-unitcell, phonopy.conf, FORCE_SETS (and BORN) from the archive in memory
    (written to a temporary folder only for phonopy's file readers)."""
    import tempfile

    import phonopy

    names = ("POSCAR-unitcell", "phonopy.conf", "FORCE_SETS", "BORN")
    files = _read_phonondb_archive(path, names, names[:3])
    where = f"{path}:phonopy.conf"
    smat = _read_conf_matrix(files["phonopy.conf"], "DIM", where)
    if smat is None:
        raise ValueError(f"{where}: no DIM (supercell matrix)")
    pmat = _read_conf_matrix(files["phonopy.conf"], "PRIMITIVE_AXIS", where)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        data = _read_force_sets(Path(tmp) / "FORCE_SETS")
        _check_dataset_finite(data, f"{path}:FORCE_SETS")
        try:
            ph = phonopy.load(unitcell_filename=str(Path(tmp) / "POSCAR-unitcell"),
                              supercell_matrix=np.rint(smat).astype(int),
                              primitive_matrix=pmat if pmat is not None else "auto",
                              born_filename=str(Path(tmp) / "BORN") if "BORN" in files else None, **kw)
        except Exception as exc:
            raise ValueError(f"{path}: phonopy could not read the archive's files ({type(exc).__name__}: {exc})") from None
    if len(ph.supercell) != int(data["natom"]):
        raise ValueError(f"{path}:FORCE_SETS: supercell size mismatch: {data['natom']} atoms, "
                         f"DIM gives {len(ph.supercell)}")
    ph.dataset = data
    return ph, f"{path}:FORCE_SETS"
