"""Evaluation of fine-tuned models against DFT: phonon properties, forgetting checks, tables.

Phonons (MDR phonon benchmark protocol, Loew et al., npj Comput. Mater. 2025):
    unrelaxed  FC2 of the model on the DFT supercell as given;
    relaxed    relax the unit cell (positions + cell, JAX FIRE, `relax_unit_cells`), then
               FC2 on the DFT supercell matrix.
Both take the DFT Born charges/ε∞ (NAC) where the data set has them, and report
ν_max [THz], S, Cv [J/K/mol] and F [kJ/mol] at `temperature` and the model − DFT errors.

Forgetting checks:
    E/F/S errors on held-out upstream frames (eV/atom, eV/Å, eV/Å³; against the frames'
    labels: DFT for real upstream files, the frozen base model for pseudo-labels);
    relaxation errors on DFT-relaxed crystals started from perturbed structures
    (mass-weighted RMS displacement [Å] and |V/V_DFT − 1|, `curvax.relax.metrics`).
"""
from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax.batch import common_shape, map_in_chunks
from curvax.finetune.losses import EFSWeights, efs_terms
from curvax.io import atomic_write
from curvax.phonons.convert import atoms_to_phonopy, phonopy_to_atoms
from curvax.phonons.data import dataset_name, load_phonopy_dataset
from curvax.phonons.fc2 import displacement_probes, force_constants, supercell_shape
from curvax.phonons.properties import COMPARED, compare, phonon_properties
from curvax.relax.driver import relax_systems, relax_unit_cells
from curvax.relax.metrics import relaxation_summary, rms_displacement, volume_error
from curvax.system import from_atoms


@eqx.filter_jit
def _efs_terms(potential, batch):
    """Per-structure E [eV/atom], F [eV/Å], σ [eV/Å³] MAE against the batch's labels."""
    return efs_terms(potential, batch, EFSWeights(), "mae")[1]

PROPERTY_UNITS = {"max_frequency": "THz", "entropy": "J/K/mol", "free_energy": "kJ/mol",
                  "heat_capacity": "J/K/mol"}


def _model_phonopy(dft, atoms, potential, bucket):
    """A phonopy object for `atoms` on the DFT supercell/primitive matrices with model FC2
    (shape-bucketed HVPs; `bucket` = ((atoms, edges), chunk) from `supercell_buckets`: materials
    on one rung and all models of one architecture share compiled programs)."""
    from phonopy import Phonopy

    ph = Phonopy(atoms_to_phonopy(atoms), supercell_matrix=dft.supercell_matrix,
                 primitive_matrix=dft.primitive_matrix, symprec=dft.symmetry.tolerance, log_level=0)
    if dft.nac_params is not None:
        ph.nac_params = dft.nac_params
    shape, chunk = bucket
    force_constants(ph, potential, bucket=shape, chunk=chunk)
    return ph


# Cost model of the evaluation's HVP calls, measured on the 2-core CPU with Nequix MP (float32,
# 2026-12-06): a call of c probes on a supercell padded to N atoms and E edges takes
# ≈ β (α + c)(E + 8N) with α ≈ 0.65, β ≈ 2.0e-4 s (c = 1, 2, 4 at 64 atoms / 5 952 edges: 2.15,
# 3.46, 6.08 s; one probe-call of 4 at 64 / 2 624: 2.9 s), and each new padded shape costs one
# compilation of ≈ 14 s (tracing + XLA) = 69 000 units of β.
_CALL_OVERHEAD = 0.65       # α: a call's fixed cost, in probes
_ATOM_WEIGHT = 8.0          # an atom costs as much as 8 edges
_COMPILE_COST = 69_000.0    # one compilation, in units of β (edge-equivalent probes)


def _rung_cost(shape, members, max_chunk):
    """(least execution cost, its chunk width) of a rung: Σ uses·⌈K/c⌉·(α + c)·(E + 8N) over
    its members (K probes, `uses` evaluations each), minimised over c ≤ `max_chunk`."""
    width = shape[1] + _ATOM_WEIGHT * shape[0]
    costs = [(sum(u * -(-k // c) for k, u in members) * (_CALL_OVERHEAD + c) * width, c)
             for c in range(1, max_chunk + 1)]
    return min(costs)


def supercell_buckets(phonons, cutoff: float, uses=None, max_chunk: int = 4) -> list:
    """A padded (atoms, edges) shape and an HVP chunk width per phonopy object, so that the
    HVPs of all materials and models compile few programs and waste little padding.

    Each supercell starts on its own rung of the shape ladder (`common_shape`: atoms to a
    multiple of 32, edges × 1.1 (room for a relaxed cell) up the ×1.5 ladder, so no supercell
    pads its edges by more than 1.65×; padding a group to its largest member once padded the
    2 048-edge NaCl supercell to 6 464 edges, 3× the work); then rungs are merged into a larger
    existing rung while the extra padded work costs less than the compilation saved, and each
    rung takes the chunk width c ≤ `max_chunk` with the least Σ ⌈K/c⌉·(α + c) for its members'
    K probes (phonopy's displacements; cost model above). uses: evaluations per material
    (models × protocols; default 2). Returns [((atoms, edges), chunk)], one per phonopy object."""
    uses = [2] * len(phonons) if uses is None else list(uses)
    own = [common_shape([supercell_shape(p, cutoff)]) for p in phonons]
    probes = [len(displacement_probes(p)[1]) for p in phonons]
    return _merge_rungs(own, probes, uses, max_chunk)


def _merge_rungs(own, probes, uses, max_chunk: int = 4) -> list:
    """`supercell_buckets` on plain numbers: own (atoms, edges) rungs, probes and uses per
    material -> [((atoms, edges), chunk)] (greedy: the most profitable merge first)."""
    n = len(own)
    assign = list(own)

    def members(rung):
        return [(probes[k], uses[k]) for k in range(n) if assign[k] == rung]

    while True:
        rungs = sorted(set(assign))
        best = None
        for r in rungs:
            here = _rung_cost(r, members(r), max_chunk)[0]
            for t in rungs:
                if t != r and t[0] >= r[0] and t[1] >= r[1]:
                    merged = _rung_cost(t, members(t) + members(r), max_chunk)[0]
                    gain = here + _rung_cost(t, members(t), max_chunk)[0] + _COMPILE_COST - merged
                    if gain > 0 and (best is None or gain > best[0]):
                        best = (gain, r, t)
        if best is None:
            break
        _, r, t = best
        assign = [t if a == r else a for a in assign]
    chunks = {r: _rung_cost(r, members(r), max_chunk)[1] for r in set(assign)}
    return [(a, chunks[a]) for a in assign]


def phonon_rows(models: dict, datasets, temperature: float = 300.0, mesh=(10, 10, 10),
                protocols=("unrelaxed", "relaxed"), fmax: float = 5e-3, progress=print,
                relax_max_atoms: int | None = None) -> list[dict]:
    """One row per (material, protocol, model): properties, DFT values and errors (`compare`).

    models: {label: potential}; datasets: paths for `curvax.phonons.data.load_phonopy_dataset`.
    The relaxed protocol relaxes every material's unit cell per model (`relax_unit_cells`: one
    compiled program, each cell stopping at convergence), only for unit cells of
    ≤ `relax_max_atoms` atoms when given (a relaxation costs tens to hundreds of force+stress
    evaluations). A relaxation that does not converge is reported in the row ("error")
    instead of aborting."""
    materials = []
    for path in datasets:
        dft = load_phonopy_dataset(path)
        materials.append((dataset_name(path), dft, phonon_properties(dft, temperature, mesh),
                          phonopy_to_atoms(dft.unitcell)))
    cutoff = next(iter(models.values())).cutoff
    relaxable = [k for k, m in enumerate(materials) if relax_max_atoms is None or len(m[3]) <= relax_max_atoms]
    uses = [len(models) * (("unrelaxed" in protocols) + ("relaxed" in protocols and k in relaxable))
            for k in range(len(materials))]
    buckets = supercell_buckets([m[1] for m in materials], cutoff, uses)
    starts = {}
    if "relaxed" in protocols:
        for label, pot in models.items():
            t = time.time()
            cells = relax_unit_cells(pot, [materials[k][3] for k in relaxable], fmax=fmax)
            starts[label] = dict(zip(relaxable, cells))
            if progress:
                progress(f"relaxed {len(cells)} unit cells with {label} ({time.time() - t:.0f} s)")
    n_all = len(models) * (len(materials) * ("unrelaxed" in protocols) + len(relaxable) * ("relaxed" in protocols))
    rows, t0, n_done = [], time.time(), 0
    for k, (name, dft, ref, unit) in enumerate(materials):
        for protocol in protocols:
            if protocol == "relaxed" and k not in relaxable:
                continue
            for label, pot in models.items():
                row = {"material": name, "protocol": protocol, "model": label}
                atoms = starts[label][k] if protocol == "relaxed" else unit
                try:
                    if isinstance(atoms, Exception):
                        raise atoms
                    props = phonon_properties(_model_phonopy(dft, atoms, pot, buckets[k]), temperature, mesh)
                    row.update(compare(props, ref))
                except ValueError as e:
                    row["error"] = str(e)
                rows.append(row)
                n_done += 1
                if progress:
                    eta = (time.time() - t0) / n_done * (n_all - n_done)
                    progress(f"[{n_done}/{n_all}, ETA {eta:.0f} s] " + _row_line(row))
    # compiled programs of the evaluation (a few per shape bucket) are not needed afterwards
    jax.clear_caches()
    return rows


def _row_line(row) -> str:
    if "error" in row:
        return f"{row['material']:>10} {row['protocol']:>9} {row['model']:>12}  failed: {row['error']}"
    return (f"{row['material']:>10} {row['protocol']:>9} {row['model']:>12}  " + "  ".join(
        f"{k}={row[k]['model']:.3f} (DFT {row[k]['dft']:.3f})" for k in COMPARED))


def per_material_changes(rows: list[dict], model: str = "fine-tuned") -> str:
    """Per material and protocol: |error| of `model` minus |error| of the base, each property
    (negative: `model` is closer to DFT), and how many of the four properties improved."""
    index = {(r["material"], r["protocol"], r["model"]): r for r in rows if "error" not in r}
    lines = [f"Per material: |{model} − DFT| − |base − DFT|  (negative = better)",
             f"{'material':<14}{'protocol':<10}" + "".join(f"{k:>16}" for k in COMPARED) + f"{'better':>8}"]
    for (mat, protocol, label), r in index.items():
        b = index.get((mat, protocol, "base"))
        if label != model or b is None:
            continue
        d = [r[k]["abs_error"] - b[k]["abs_error"] for k in COMPARED]
        lines.append(f"{mat:<14}{protocol:<10}" + "".join(f"{x:>+16.4f}" for x in d)
                     + f"{sum(x < 0 for x in d):>6}/4")
    return "\n".join(lines)


def phonon_summary(rows: list[dict]) -> dict:
    """{(protocol, model): {property: MAE over materials, "n": materials, "n_failed": failures}}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["model"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        out[key] = {k: float(np.mean([r[k]["abs_error"] for r in ok])) if ok else float("nan") for k in COMPARED}
        out[key].update(n=len(ok), n_failed=len(rs) - len(ok))
    return out


def percent_change(mae: dict, base: dict) -> dict:
    """{property: 100·(MAE / MAE_base − 1)} [%] (nan where the base's MAE is 0)."""
    return {k: 100 * (mae[k] / base[k] - 1) if base[k] else float("nan") for k in COMPARED}


def efs_errors(models: dict, batch, chunk: int = 32) -> dict:
    """{label: {"energy": eV/atom, "forces": eV/Å, "stress": eV/Å³}} MAE against `batch` labels
    (mean over structures), `chunk` structures per compiled call (memory ∝ chunk: the report's
    120 held-out crystals at once raised the main job's peak RSS from 8 to 12 GB)."""
    out = {}
    for label, pot in models.items():
        terms = map_in_chunks(lambda b: _efs_terms(pot, b), batch, chunk)
        out[label] = {k: float(np.mean(v)) for k, v in terms.items()}
    return out


def relaxation_errors(models: dict, pairs, steps: int = 300, fmax: float = 0.02) -> dict:
    """{label: `relax.metrics.relaxation_summary`} over `pairs` (`relax.data.RelaxPair`: perturbed
    start → DFT relaxed), positions + cell relaxed by `relax_systems`."""
    starts = [from_atoms(p.initial) for p in pairs]
    out = {}
    for label, pot in models.items():
        relaxed, info = relax_systems(pot, starts, cell=True, steps=steps, fmax=fmax)
        d, v = [], []
        for s, p in zip(relaxed, pairs):
            ref = p.final
            args = tuple(map(jnp.asarray, (s.positions, s.cell, ref.positions, ref.cell.array)))
            d.append(float(rms_displacement(*args, ref.numbers, jnp.ones(len(ref), bool))))
            v.append(float(volume_error(args[1], args[3])))
        out[label] = relaxation_summary(d, v, info["n_steps"], info["converged"])
    return out


def format_report(summary: dict, efs: dict | None = None, relax: dict | None = None,
                  temperature: float = 300.0, title: str = "held-out materials",
                  dft_relaxed: dict | None = None, n_dft_relaxed: int = 0) -> str:
    """Plain-text before/after tables (with the % change of each model's MAE vs the base).
    efs: `efs_errors` on the held-out upstream frames; dft_relaxed: `efs_errors` on
    `pft.dft_relaxed_frames` (`n_dft_relaxed` crystals); relax: `relaxation_errors`."""
    w = max([len(m) for _, m in summary] + [len(m) for m in (efs or {})] + [9]) + 2
    lines = [f"Phonon property MAE vs DFT on {title} (T = {temperature:g} K)",
             f"{'protocol':<10}{'model':<{w}}{'n':>3}" + "".join(
                 f"{k + ' [' + PROPERTY_UNITS[k] + ']':>26}" for k in COMPARED)]
    for (protocol, model), d in summary.items():
        failed = f"  ({d['n_failed']} failed)" if d["n_failed"] else ""
        lines.append(f"{protocol:<10}{model:<{w}}{d['n']:>3}" + "".join(f"{d[k]:>26.4f}" for k in COMPARED) + failed)
        base = summary.get((protocol, "base"))
        if base is not None and model != "base":
            change = percent_change(d, base)
            lines.append(f"{'':<10}{'  vs base':<{w}}{'':>3}" + "".join(f"{change[k]:>+25.1f}%" for k in COMPARED))
    if efs:
        lines += ["", "Forgetting: E/F/S MAE on held-out upstream frames",
                  f"{'model':<{w}}{'E [meV/atom]':>14}{'F [meV/Å]':>12}{'σ [meV/Å³]':>12}"]
        lines += [f"{m:<{w}}{1e3 * d['energy']:>14.2f}{1e3 * d['forces']:>12.2f}{1e3 * d['stress']:>12.3f}"
                  for m, d in efs.items()]
    if dft_relaxed:
        lines += ["", f"Forgetting vs DFT: {n_dft_relaxed} held-out DFT-relaxed crystals at the DFT geometry "
                      "(E − E_DFT; |F|, |σ|: DFT's are ≈ 0)",
                  f"{'model':<{w}}{'E [meV/atom]':>14}{'|F| [meV/Å]':>14}{'|σ| [meV/Å³]':>14}"]
        lines += [f"{m:<{w}}{1e3 * d['energy']:>14.2f}{1e3 * d['forces']:>14.2f}{1e3 * d['stress']:>14.3f}"
                  for m, d in dft_relaxed.items()]
    if relax:
        lines += ["", "Forgetting: relaxation of perturbed DFT-relaxed crystals",
                  f"{'model':<{w}}{'RMSD [Å]':>10}{'|ΔV/V|':>10}{'steps':>8}{'converged':>11}"]
        lines += [f"{m:<{w}}{d['rms_displacement']:>10.4f}{d['abs_volume_error']:>10.4f}{d['steps']:>8.0f}"
                  f"{d['converged']:>11.2f}" for m, d in relax.items()]
    return "\n".join(lines)


def plot_report(rows: list[dict], filename) -> None:
    """PNG: per material, |model − DFT| of each property, one bar per model (relaxed and
    unrelaxed protocols side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    materials = sorted({r["material"] for r in ok})
    series = sorted({(r["protocol"], r["model"]) for r in ok}, key=lambda s: (s[0], s[1]))
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(4 * len(COMPARED), 3.6))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(materials))
    for ax, prop in zip(axes, COMPARED):
        for k, (protocol, model) in enumerate(series):
            vals = [next((r[prop]["abs_error"] for r in ok if r["material"] == m and r["protocol"] == protocol
                          and r["model"] == model), np.nan) for m in materials]
            ax.bar(x + k * width, vals, width, label=f"{model} ({protocol})",
                   hatch="//" if protocol == "unrelaxed" else None)
        ax.set_xticks(x + 0.4 - width / 2, materials, rotation=45)
        ax.set_title(f"|Δ {prop}| [{PROPERTY_UNITS[prop]}]", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(filename, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
