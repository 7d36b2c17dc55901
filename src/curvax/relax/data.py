"""Relaxation data: DFT-relaxed crystals, perturbed starting structures, splits, extxyz pairs.

- `load_dft_relaxed(path)`: pymatgen-JSON list (matcalc benchmark format, e.g.
  `wbm-random-pbe52-equilibrium-2025.1.json.gz`) of {material_id, structure, energy, ...}
  -> `RelaxRecord`s with `ase.Atoms` (Å) and the DFT total energy (eV); or a phonondb folder
  (`manifest.csv` + archives): its PBEsol-relaxed unit cells (no energies).
- `perturb(atoms, rattle, strain, rng)`: starting structure = DFT structure deformed by a random
  symmetric strain, x → x(I + ε), ε_ab ~ U(−strain, strain), then rattled x_i += N(0, rattle²) Å.
- `split_by_material(ids, fractions, seed)`: train/validation/test by a hash of (seed, id), so a
  material's perturbations never straddle splits and the split does not depend on file order.
- `make_pairs(...)`, `write_pairs(...)`, `read_pairs(...)`: (initial, final) pairs as extxyz,
  frames alternating initial/final with info keys `material_id`, `role`, and `energy` (final).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curvax.io import atomic_write


class RelaxRecord(NamedTuple):
    material_id: str
    atoms: object  # ase.Atoms, DFT-relaxed
    energy: float  # DFT total energy [eV] (nan if absent)


class RelaxPair(NamedTuple):
    material_id: str
    initial: object  # ase.Atoms, perturbed starting structure
    final: object  # ase.Atoms, DFT-relaxed target
    energy: float  # DFT energy of `final` [eV]


def read_json(path: Path):
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            return json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a (gzipped) JSON file ({type(e).__name__}: {e})") from None


def load_dft_relaxed(path, max_atoms: int | None = None, limit: int | None = None) -> list[RelaxRecord]:
    """Read DFT-relaxed structures: a pymatgen JSON(.gz) list, or a phonondb folder (its PBEsol
    unit cells, manifest order; no energies). Skips structures with > max_atoms atoms."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(path)
    if path.is_dir():  # a phonondb folder (`phonondb_entries` names a missing manifest.csv)
        return _load_phonondb_unitcells(path, max_atoms, limit)
    if not path.is_file():
        raise FileNotFoundError(f"relaxation data not found: {path}")
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("data", data.get("entries", None))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries with 'structure', got {type(data).__name__}")
    out = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "structure" not in entry:
            raise ValueError(f"{path}: entry {k} has no 'structure' key")
        mid = str(entry.get("material_id", f"entry-{k}"))
        sites = entry["structure"].get("sites") if isinstance(entry["structure"], dict) else None
        if max_atoms is not None and isinstance(sites, list) and len(sites) > max_atoms:
            continue
        try:
            structure = Structure.from_dict(entry["structure"])
        except Exception as e:
            raise ValueError(f"{path}: entry {k} ({mid}): unreadable pymatgen structure "
                             f"({type(e).__name__}: {e})") from None
        if not structure.is_ordered:
            raise ValueError(f"{path}: entry {k} ({mid}) is a disordered structure")
        if max_atoms is not None and len(structure) > max_atoms:
            continue
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info["material_id"] = mid
        out.append(RelaxRecord(mid, atoms, float(entry.get("energy", np.nan))))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{path}: no usable structures (max_atoms={max_atoms})")
    return out


def _load_phonondb_unitcells(root: Path, max_atoms: int | None, limit: int | None) -> list[RelaxRecord]:
    from curvax.phonons.data import phonondb_entries, phonondb_unitcell

    out = []
    for e in phonondb_entries(root):
        if max_atoms is not None and e.n_unitcell > max_atoms:
            continue
        atoms = phonondb_unitcell(e.path)
        atoms.info["material_id"] = e.mp_id
        out.append(RelaxRecord(e.mp_id, atoms, np.nan))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{root}: no phonondb unit cells with ≤ {max_atoms} atoms")
    return out


def perturb(atoms, rattle: float = 0.1, strain: float = 0.03, rng=None):
    """Strained and rattled copy of `atoms` (formula in the module docstring; Å)."""
    rng = np.random.default_rng(rng)
    a = atoms.copy()
    eps = rng.uniform(-strain, strain, (3, 3))
    eps = 0.5 * (eps + eps.T)
    a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    a.positions = a.positions + rng.normal(0.0, rattle, a.positions.shape)
    return a


def _unit_hash(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2.0 ** 64


def split_by_material(ids, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """{'train','validation','test'} -> sorted material ids, by a hash of (seed, id)."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    edges = np.cumsum(f / f.sum())
    out = {"train": [], "validation": [], "test": []}
    for mid in sorted(set(ids)):
        u = _unit_hash(seed, mid)
        out[("train", "validation", "test")[int(np.searchsorted(edges, u, side="right").clip(0, 2))]].append(mid)
    return out


def make_pairs(records, n_perturbations: int = 1, rattle: float = 0.1, strain: float = 0.03,
               seed: int = 0) -> list[RelaxPair]:
    """(perturbed, DFT) pairs; perturbation k of material m seeded by hash(seed, m, k)."""
    pairs = []
    for r in records:
        for k in range(n_perturbations):
            rng = np.random.default_rng(int(_unit_hash(seed, f"{r.material_id}/{k}") * 2 ** 63))
            pairs.append(RelaxPair(r.material_id, perturb(r.atoms, rattle, strain, rng), r.atoms, r.energy))
    return pairs


def write_pairs(path, pairs) -> Path:
    """Write pairs as extxyz (initial, final, initial, final, ...), atomically."""
    from ase.io import write

    path = Path(path)
    frames = []
    for p in pairs:
        a, b = p.initial.copy(), p.final.copy()
        a.info.update(material_id=p.material_id, role="initial")
        b.info.update(material_id=p.material_id, role="final", energy=float(p.energy))
        frames += [a, b]
    return atomic_write(path, lambda tmp: write(tmp, frames, format="extxyz"))


def read_pairs(path) -> list[RelaxPair]:
    """Read pairs written by `write_pairs` (or any extxyz with alternating initial/final frames)."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as e:
        raise ValueError(f"{path}: unreadable extxyz ({type(e).__name__}: {e})") from None
    if len(frames) % 2:
        raise ValueError(f"{path}: odd number of frames ({len(frames)}); expected (initial, final) pairs")
    pairs = []
    for k in range(0, len(frames), 2):
        a, b = frames[k], frames[k + 1]
        if a.info.get("role", "initial") != "initial" or b.info.get("role", "final") != "final":
            raise ValueError(f"{path}: frames {k},{k + 1} are not an (initial, final) pair (role info)")
        if list(a.numbers) != list(b.numbers):
            raise ValueError(f"{path}: frames {k},{k + 1}: initial and final have different atoms")
        mid = str(b.info.get("material_id", a.info.get("material_id", f"pair-{k // 2}")))
        e = b.info.get("energy", np.nan)
        if b.calc is not None and "energy" in getattr(b.calc, "results", {}):
            e = b.calc.results["energy"]
        pairs.append(RelaxPair(mid, a, b, float(e)))
    return pairs


def load_pairs(path, **kwargs) -> list[RelaxPair]:
    """Pairs from a pymatgen JSON(.gz) of relaxed structures (perturbed here) or an extxyz of pairs.

    kwargs for JSON: max_atoms, limit, n_perturbations, rattle, strain, seed.
    """
    path = Path(path)
    if path.suffix in (".xyz", ".extxyz"):
        return read_pairs(path)
    load_kw = {k: kwargs.pop(k) for k in ("max_atoms", "limit") if k in kwargs}
    return make_pairs(load_dft_relaxed(path, **load_kw), **kwargs)
