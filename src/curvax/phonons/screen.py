"""Phonon screening: harmonic phonons of many structures in one run, compiled once per shape.

Per structure (the quantities of the MDR phonon benchmark, Loew et al., npj Comput. Mater. 2025):

    relax       optional: positions + cell, JAX FIRE (`relax.driver.relax_unit_cells`)
    supercell   n_i = ⌈L / h_i⌉ times lattice vector i, h_i = V / |a_j × a_k| the spacing of
                its lattice planes, so every perpendicular width is ≥ L (`min_length`, 10 Å);
                a DFT phonon set (phonondb archive) keeps its own supercell/primitive matrices
    FC2         exact HVPs on phonopy's symmetry-reduced displacements (`phonons.fc2`)
    properties  ν_min, ν_max [THz] on the q mesh, imaginary flag (ν_min < −0.05 THz), and at each
                temperature F [kJ/mol], S, Cv [J/K/mol] per mole of the input cell (phonondb: of
                phonopy's primitive cell, as its DFT reference); ω_max [K] = ν_max · h/k_B

DFT references: a structure file may carry `max_frequency` [THz], `entropy`, `heat_capacity`
[J/K/mol] or `free_energy` [kJ/mol] at 300 K (pymatgen-JSON entry keys or extxyz info keys; e.g.
`heat_capacity` in the Alexandria phonon set); a phonondb archive is its own reference (its
FORCE_SETS, same supercell, mesh and temperatures). Errors are model − DFT.

Compile once per shape: structures are taken `group` at a time in order of size; within a group
each supercell is padded to `batch.bucket_shape` of its (atoms, edges), and the HVP probes of all
structures of one bucket go through one vmapped program (`hessian.hvp_batch`), up to `width`
probes per call and at most `max_edges` padded edges per call (memory: Nequix MP needs ≈ 0.5 MB
per edge for an HVP in float32, so the default 16 384 edges ≈ 8 GB). Compilations grow with the number of buckets, not of structures, and the model's
parameters are arguments, so a second model of the same architecture reuses the programs.

Resume: every finished structure (or its error row) is appended to `results.jsonl` at once, and
a rerun with the same settings (`settings.json`; only `limit` may grow) skips the ids already
there; a line cut by a kill is dropped. `results.csv`, `summary.json`, `parity.png`, `errors.png` are rewritten at the end.
"""
from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curvax import batch as batching
from curvax.config import changed_settings
from curvax.io import atomic_write
from curvax.phonons.properties import COMPARED, DEFAULT_MESH, phonon_properties

__all__ = ["ScreenEntry", "read_structures", "supercell_for_length", "screen", "plot_parity", "compile_events",
           "REFERENCE_T"]

REFERENCE_T = 300.0       # K: the temperature of the DFT references
THZ_TO_K = 47.99243       # h/k_B [K/THz]: ω_max in K = ν_max [THz] × THZ_TO_K
UNITS = {"max_frequency": "THz", "entropy": "J/K/mol", "free_energy": "kJ/mol", "heat_capacity": "J/K/mol"}
SHORT = {"max_frequency": "nu_max", "entropy": "S", "free_energy": "F", "heat_capacity": "Cv"}
LOG, SETTINGS = "results.jsonl", "settings.json"
MAY_CHANGE = ("limit",)  # settings a resumed run may change (a screen extended to more structures)


class ScreenEntry(NamedTuple):
    """One structure to screen."""

    id: str
    atoms: object            # ase.Atoms unit cell; None for a phonondb archive (read when screened)
    reference: dict          # DFT values at REFERENCE_T by property name (see UNITS)
    source: str              # where it came from (file, entry)
    size: int                # atoms (unit cell; phonondb: DFT supercell), for ordering
    dft_path: Path | None = None  # phonondb archive: the DFT phonon set
    error: str = ""          # an input problem: screened as an error row


# ---------------------------------------------------------------------------------- inputs


def read_structures(path, limit: int | None = None, max_atoms: int | None = None) -> list[ScreenEntry]:
    """The structures of `path`: a pymatgen-JSON(.gz) list, an ASE-readable file (extxyz, ...),
    a folder of POSCAR/CONTCAR/*.vasp/*.cif files, or a phonondb folder (manifest.csv; only
    supercells ≤ `max_atoms`, manifest order). `limit`: the first `limit` structures.
    A structure that fails validation becomes an entry with `error` (screened as an error row);
    an unreadable file stops with a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"structures not found: {path}")
    if path.is_dir() and (path / "manifest.csv").is_file():
        from curvax.phonons.data import phonondb_entries

        entries = [ScreenEntry(f"{e.mp_id}-{e.formula}", None, {}, str(e.path), e.n_supercell, e.path)
                   for e in phonondb_entries(path, max_atoms)]
        return _unique(entries[:limit])
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (
            p.name.startswith(("POSCAR", "CONTCAR")) or p.suffix.lower() in (".vasp", ".cif")))
        if not files:
            raise ValueError(f"{path}: no POSCAR/CONTCAR/*.vasp/*.cif files")
        return _unique([_file_entry(p) for p in files[:limit]])
    if path.name.endswith((".json", ".json.gz")):
        return _unique(_json_entries(path, limit))
    return _unique(_frame_entries(path, limit))


def _entry(id_, atoms, reference, source) -> ScreenEntry:
    from curvax.validation import check_atoms

    error = ""
    try:
        check_atoms(atoms, source, periodic=True)
    except ValueError as e:
        error = str(e)
    ref = {k: float(reference[k]) for k in COMPARED if reference.get(k) is not None}
    return ScreenEntry(str(id_), atoms, ref, source, len(atoms), None, error)


def _file_entry(p: Path) -> ScreenEntry:
    import ase.io

    try:
        atoms = ase.io.read(str(p))
    except Exception as e:  # noqa: BLE001  (ASE raises many types for unreadable files)
        return ScreenEntry(p.name, None, {}, str(p), 0, None, f"{p}: unreadable ({type(e).__name__}: {e})")
    return _entry(p.name, atoms, {}, str(p))


def _json_entries(path: Path, limit) -> list[ScreenEntry]:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from curvax.relax.data import read_json

    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("data", data.get("entries"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries with a 'structure' (pymatgen dict)")
    out = []
    for k, entry in enumerate(data[:limit]):
        where = f"{path} entry {k}"
        if not isinstance(entry, dict) or "structure" not in entry:
            raise ValueError(f"{where}: no 'structure' key")
        id_ = entry.get("material_id") or entry.get("mp_id") or entry.get("id") or f"entry-{k}"
        try:
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(entry["structure"]))
        except Exception as e:  # noqa: BLE001  (pymatgen raises many types)
            out.append(ScreenEntry(str(id_), None, {}, where, 0, None,
                                   f"{where}: unreadable pymatgen structure ({type(e).__name__}: {e})"))
            continue
        out.append(_entry(id_, atoms, entry, where))
    return out


def _frame_entries(path: Path, limit) -> list[ScreenEntry]:
    import ase.io

    try:
        frames = ase.io.read(str(path), index=":" if limit is None else f":{limit}")
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read structures ({type(e).__name__}: {e})") from None
    if not frames:
        raise ValueError(f"{path}: no structures")
    return [_entry(a.info.get("material_id") or a.info.get("id") or a.info.get("name") or f"frame-{k}",
                   a, a.info, f"{path} frame {k}") for k, a in enumerate(frames)]


def _unique(entries: list[ScreenEntry]) -> list[ScreenEntry]:
    """Ids made unique (a repeated id gets `#2`, `#3`, ...): results are keyed by id."""
    seen, out = {}, []
    for e in entries:
        n = seen[e.id] = seen.get(e.id, 0) + 1
        out.append(e if n == 1 else e._replace(id=f"{e.id}#{n}"))
    return out


def supercell_for_length(cell, min_length: float) -> np.ndarray:
    """diag(n_1, n_2, n_3), n_i = ⌈L / h_i⌉ with h_i = V / |a_j × a_k| the spacing of the
    lattice planes spanned by the other two vectors: every perpendicular width ≥ L [Å]."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    heights = [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return np.diag([max(1, int(np.ceil(min_length / h - 1e-8))) for h in heights])


# ---------------------------------------------------------------------------------- screening


class _Job(NamedTuple):
    entry: ScreenEntry
    phonon: object          # phonopy.Phonopy of the model (force constants set at the end)
    work: object            # its displacement copy (`fc2.displacement_probes`)
    probes: np.ndarray      # (K, Ns, 3)
    padded: object          # batch.Structure of the supercell, padded to `shape`
    shape: tuple            # (atoms, edges) bucket
    dft: object | None      # the DFT phonopy object (phonondb) or None
    relaxed: bool


def screen(entries: list[ScreenEntry], potential, out, *, relax: bool = False, min_length: float = 10.0,
           temperatures=(REFERENCE_T,), mesh=DEFAULT_MESH, max_supercell_atoms: int = 256,
           fmax: float = 5e-3, relax_steps: int = 500, width: int = 8, max_edges: int = 16384,
           group: int = 16, settings: dict | None = None, restart: bool = False, progress: bool = True) -> dict:
    """Screen `entries` with `potential`, writing to the folder `out` (see the module docstring).

    relax: relax positions + cell first (FIRE to `fmax` [eV/Å] within `relax_steps`).
    min_length [Å]: supercell widths. temperatures [K]: F, S, Cv at each (300 K is always
    included for the references). mesh: phonopy q mesh (length [Å] or 3 ints).
    max_supercell_atoms: larger supercells are error rows. width: HVPs per compiled call, fewer
    where width × padded edges would exceed `max_edges` (a bucket's probes wait until a call is
    full, across groups; the rest run padded at the end). group: structures loaded and relaxed
    together.
    settings: JSON-able record of the run (model, input, options) kept in settings.json; a
    rerun resumes only under the same settings unless `restart`. Returns the summary dict."""
    from tqdm.auto import tqdm

    from curvax.validation import check_writable

    out = check_writable(out, "output folder")
    temps = sorted({float(t) for t in np.atleast_1d(temperatures)} | {REFERENCE_T})
    record = json.loads(json.dumps({**(settings or {}), "relax": relax, "min_length": min_length,
                                    "temperatures": temps, "mesh": mesh, "max_supercell_atoms": max_supercell_atoms,
                                    "fmax": fmax, "relax_steps": relax_steps}, default=str))
    done = _resume(out, record, restart)
    todo = sorted((e for e in entries if e.id not in done), key=lambda e: e.size)
    compiles, t0 = compile_events(), time.time()
    queues = _HVPQueues(potential, width, max_edges)
    with tqdm(total=len(entries), initial=len(entries) - len(todo), desc="screen", unit="structure",
              disable=not progress) as bar, open(out / LOG, "a") as log:

        def emit(row):
            done[row["id"]] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(1)

        def finish(job, hv):
            try:
                emit(_properties_row(job, hv, temps, mesh))
            except Exception as exc:  # noqa: BLE001  (an error row, not an abort)
                emit(_error_row(job.entry, exc))

        for start in range(0, len(todo), group):
            for item in _prepare(todo[start:start + group], potential, relax, min_length, max_supercell_atoms,
                                 fmax, relax_steps):
                if isinstance(item, dict):
                    emit(item)
                else:
                    queues.add(item)
            for job, hv in queues.run(full_only=True):
                finish(job, hv)
        for job, hv in queues.run(full_only=False):
            finish(job, hv)
    rows = [done[e.id] for e in entries if e.id in done]
    events = compile_events()[len(compiles):]
    summary = _summary(rows, record, time.time() - t0, len(todo), events, queues.calls)
    _write_outputs(out, rows, summary)
    return summary


def _resume(out: Path, record: dict, restart: bool) -> dict:
    """Rows already in results.jsonl (by id) when settings.json matches `record`."""
    log, stored = out / LOG, out / SETTINGS
    if restart:
        log.unlink(missing_ok=True)
    done = {}
    if log.is_file():
        old = json.loads(stored.read_text()) if stored.is_file() else {}
        diff = changed_settings(old, record, MAY_CHANGE)
        if diff:
            raise ValueError(f"{out} holds a screening run with different settings: " + "; ".join(diff)
                             + ". Rerun with --restart to start afresh, or choose another --out")
        good = []
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            done[row["id"]] = row
            good.append(line)
        atomic_write(log, "".join(x + "\n" for x in good))
    atomic_write(stored, json.dumps(record, indent=1))
    return done


_COMPILE_EVENTS: list = []   # durations [s] of this process's XLA backend compilations


def _on_event(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE_EVENTS.append(float(duration))


def compile_events() -> list:
    """Durations [s] of the XLA backend compilations of this process so far (JAX's monitoring
    events; recorded from the first call on). Slice by a previous length for a run's own."""
    if not getattr(compile_events, "listening", False):
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_event)
        compile_events.listening = True
    return list(_COMPILE_EVENTS)


def _prepare(entries, potential, relax, min_length, max_atoms, fmax, relax_steps):
    """For each entry of one group: an error row (dict), or a `_Job` ready for its HVPs
    (loaded, species checked, relaxed by one compiled program, supercell and probes set up)."""
    from curvax.potentials import check_species
    from curvax.relax.driver import relax_unit_cells

    cells, out = {}, {}
    for e in entries:
        try:
            if e.error:
                raise ValueError(e.error)
            atoms, dft = (e.atoms, None) if e.dft_path is None else _load_dft(e.dft_path)
            check_species(potential, atoms.numbers, where=e.source)
            cells[e.id] = (atoms, dft)
        except Exception as exc:  # noqa: BLE001  (an error row, not an abort)
            out[e.id] = _error_row(e, exc)
    ok = [e for e in entries if e.id in cells]
    if relax and ok:
        relaxed = relax_unit_cells(potential, [cells[e.id][0] for e in ok], fmax=fmax, steps=relax_steps)
        for e, r in zip(ok, relaxed):
            if isinstance(r, Exception):
                del cells[e.id]
                out[e.id] = _error_row(e, r)
            else:
                cells[e.id] = (r, cells[e.id][1])
    for e in entries:
        if e.id in cells:
            try:
                out[e.id] = _job(e, *cells[e.id], potential, min_length, max_atoms, relax)
            except Exception as exc:  # noqa: BLE001
                out[e.id] = _error_row(e, exc)
        yield out[e.id]


def _load_dft(path: Path):
    from curvax.phonons.convert import phonopy_to_atoms
    from curvax.phonons.data import load_phonopy_dataset

    dft = load_phonopy_dataset(path)
    return phonopy_to_atoms(dft.unitcell), dft


def _job(e: ScreenEntry, atoms, dft, potential, min_length, max_atoms, relaxed) -> _Job:
    from phonopy import Phonopy

    from curvax.phonons.convert import atoms_to_phonopy, phonopy_to_atoms
    from curvax.phonons.fc2 import displacement_probes
    from curvax.potentials.base import parameter_dtype
    from curvax.system import from_atoms

    if dft is None:
        smat, pmat, symprec = supercell_for_length(atoms.cell, min_length), None, 1e-5
    else:
        smat, pmat, symprec = dft.supercell_matrix, dft.primitive_matrix, dft.symmetry.tolerance
    n_super = int(round(abs(np.linalg.det(smat)))) * len(atoms)
    if n_super > max_atoms:
        raise ValueError(f"supercell of {n_super} atoms > max_supercell_atoms = {max_atoms}")
    dtype = parameter_dtype(potential)
    with warnings.catch_warnings():  # e.g. a supercell of lower point symmetry than the cell
        warnings.simplefilter("ignore")
        ph = Phonopy(atoms_to_phonopy(atoms), supercell_matrix=smat, primitive_matrix=pmat,
                     symprec=symprec, log_level=0)
        work, probes = displacement_probes(ph, dtype)
    if dft is not None and dft.nac_params is not None:
        ph.nac_params = dft.nac_params
    system = from_atoms(phonopy_to_atoms(work.supercell), dtype=dtype)
    graph = batching.graph_of(system, potential.cutoff, where=e.source)
    shape = batching.bucket_shape(len(work.supercell), int(np.sum(np.asarray(graph.mask))))
    padded = batching.pad_structure(system, graph, *shape)
    return _Job(e, ph, work, probes, padded, shape, dft, relaxed)


class _HVPQueues:
    """Per bucket shape, a queue of (job, probe) HVPs evaluated by one vmapped compiled program
    (`hessian.hvp_batch`), `width(shape)` at a time; a job is returned once all its probes are done."""

    def __init__(self, potential, width: int, max_edges: int):
        self.potential, self.max_width, self.max_edges, self.calls = potential, width, max_edges, 0
        self.queues, self.results = {}, {}

    def width(self, shape) -> int:
        """Probes per call for a padded (atoms, edges) shape: ≤ `width`, ≤ max_edges / edges, ≥ 1."""
        return max(1, min(self.max_width, self.max_edges // shape[1]))

    def add(self, job: _Job) -> None:
        self.results[id(job)] = (job, np.empty(job.probes.shape), len(job.probes))
        self.queues.setdefault(job.shape, []).extend((job, p) for p in range(len(job.probes)))

    def run(self, full_only: bool):
        """Evaluate queued HVPs (full calls only, or everything, the last call per bucket padded
        by repeating its first probe); yields (job, hv (K, Ns, 3)) of the jobs completed."""
        import jax.numpy as jnp

        from curvax.hessian import hvp_batch

        for shape, queue in self.queues.items():
            width = self.width(shape)
            while len(queue) >= width or (queue and not full_only):
                part, queue[:] = queue[:width], queue[width:]
                calls = part + part[:1] * (width - len(part))
                vs = np.zeros((width, shape[0], 3), dtype=part[0][0].probes.dtype)
                for b, (job, p) in enumerate(calls):
                    vs[b, :job.probes.shape[1]] = job.probes[p]
                structures = [job.padded for job, _ in calls]
                hv = np.asarray(hvp_batch(self.potential, batching.stack(structures), jnp.asarray(vs)))
                self.calls += 1
                for b, (job, p) in enumerate(part):
                    j, out, left = self.results[id(job)]
                    out[p] = hv[b, :job.probes.shape[1]]
                    if left == 1:
                        del self.results[id(job)]
                        yield job, out
                    else:
                        self.results[id(job)] = (j, out, left - 1)


def _properties_row(job: _Job, hv, temps, mesh) -> dict:
    from curvax.phonons.fc2 import force_constants_from_hvps

    job.phonon.force_constants = force_constants_from_hvps(job.work, hv)
    with warnings.catch_warnings():  # phonopy's note that a length mesh was rebuilt for the symmetry
        warnings.simplefilter("ignore")
        p = phonon_properties(job.phonon, temps, mesh)
    at = temps.index(REFERENCE_T)
    row = {"id": job.entry.id, "formula": _formula(job), "n_atoms": len(job.phonon.unitcell),
           "n_supercell": len(job.phonon.supercell),
           "supercell": " ".join(str(int(x)) for x in np.asarray(job.phonon.supercell_matrix).ravel()),
           "relaxed": job.relaxed, "n_hvp": len(job.probes), "bucket": f"{job.shape[0]}x{job.shape[1]}",
           "nu_min_THz": p["min_frequency"], "nu_max_THz": p["max_frequency"],
           "imaginary": p["has_imaginary"], "n_imaginary_modes": p["n_imaginary"]}
    for k, t in enumerate(temps):
        row[f"F_{t:g}K_kJ/mol"] = p["free_energy"][k]
        row[f"S_{t:g}K_J/K/mol"] = p["entropy"][k]
        row[f"Cv_{t:g}K_J/K/mol"] = p["heat_capacity"][k]
    model = {"max_frequency": p["max_frequency"], **{q: p[q][at] for q in COMPARED if q != "max_frequency"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = job.entry.reference if job.dft is None else phonon_properties(job.dft, REFERENCE_T, mesh)
    for q in COMPARED:
        if reference.get(q) is not None:
            name = f"{SHORT[q]}{'' if q == 'max_frequency' else '_300K'}_{UNITS[q]}"
            row[f"dft_{name}"] = float(reference[q])
            row[f"error_{name}"] = model[q] - float(reference[q])
    row["error"] = ""
    return row


def _formula(job: _Job) -> str:
    from curvax.phonons.convert import phonopy_to_atoms

    return phonopy_to_atoms(job.phonon.unitcell).get_chemical_formula(mode="metal", empirical=True)


def _error_row(e: ScreenEntry, exc: Exception) -> dict:
    msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return {"id": e.id, "error": msg or type(exc).__name__}


# ---------------------------------------------------------------------------------- outputs


def _summary(rows: list[dict], record: dict, seconds: float, n_new: int, compiles: list, hvp_calls: int) -> dict:
    ok = [r for r in rows if not r.get("error")]
    mae = {}
    for q in COMPARED:
        errs = [r[k] for r in ok for k in r if k.startswith(f"error_{SHORT[q]}_")]
        if errs:
            mae[q] = {"mae": float(np.mean(np.abs(errs))), "unit": UNITS[q], "n": len(errs),
                      "mean_error": float(np.mean(errs))}
    if "max_frequency" in mae:
        mae["max_frequency_K"] = {"mae": mae["max_frequency"]["mae"] * THZ_TO_K, "unit": "K",
                                  "n": mae["max_frequency"]["n"]}
    return {"settings": record, "n_structures": len(rows), "n_ok": len(ok), "n_failed": len(rows) - len(ok),
            "n_imaginary": sum(bool(r.get("imaginary")) for r in ok), "mae_vs_dft": mae,
            "this_run": {"structures": n_new, "seconds": round(seconds, 1),
                         "structures_per_minute": round(60 * n_new / seconds, 2) if seconds > 0 and n_new else None,
                         "xla_compilations": len(compiles),
                         "xla_compilations_over_1s": sum(t >= 1.0 for t in compiles),
                         "compile_seconds": round(sum(compiles), 1), "hvp_calls": hvp_calls,
                         "buckets": sorted({r["bucket"] for r in ok if "bucket" in r})},
            "failed": {r["id"]: r["error"] for r in rows if r.get("error")},
            "structures": [r["id"] for r in rows]}


def _write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    import io

    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys = ["id"] + [k for k in keys if k not in ("id", "error")] + ["error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(out / "results.csv", buf.getvalue())
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    settings = summary["settings"]
    title = " on ".join(Path(str(settings[k])).name for k in ("model", "structures") if settings.get(k))
    plot_parity(rows, out / "parity.png", out / "errors.png", title=title)


def plot_parity(rows: list[dict], parity_png, errors_png, title: str = "") -> bool:
    """Model vs DFT parity plot and error histogram, one panel per property with references
    (units on the axes, MAE in the legend). Returns False (no files) when nothing has a reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    panels = []
    for q in COMPARED:
        key = next((k[4:] for r in ok for k in r if k.startswith(f"dft_{SHORT[q]}_")), None)
        if key:
            pairs = [(r[f"dft_{key}"], r[f"dft_{key}"] + r[f"error_{key}"]) for r in ok if f"dft_{key}" in r]
            panels.append((q, np.array(pairs)))
    if not panels:
        return False
    label = {"max_frequency": "ν_max [THz]", "entropy": "S at 300 K [J/K/mol]",
             "free_energy": "F at 300 K [kJ/mol]", "heat_capacity": "Cv at 300 K [J/K/mol]"}
    for filename, kind in ((parity_png, "parity"), (errors_png, "errors")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
        for ax, (q, xy) in zip(axes[0], panels):
            err = xy[:, 1] - xy[:, 0]
            mae = f"MAE {np.mean(np.abs(err)):.3g} {UNITS[q]} (n = {len(xy)})"
            if kind == "parity":
                lo, hi = float(xy.min()), float(xy.max())
                pad = 0.05 * (hi - lo or 1.0)
                ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="model = DFT")
                ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.7, label=mae)
                ax.set_xlabel(f"DFT {label[q]}")
                ax.set_ylabel(f"model {label[q]}")
                ax.set_aspect("equal", adjustable="datalim")
            else:
                ax.hist(err, bins=min(40, max(5, len(err) // 3)), alpha=0.8, label=mae)
                ax.axvline(0.0, color="k", lw=1)
                ax.set_xlabel(f"model − DFT, {label[q]}")
                ax.set_ylabel("structures")
            ax.legend(fontsize=8, loc="upper left")
        fig.suptitle(f"{'Parity' if kind == 'parity' else 'Errors'} vs DFT" + (f": {title}" if title else ""))
        fig.tight_layout()
        atomic_write(filename, lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    return True
