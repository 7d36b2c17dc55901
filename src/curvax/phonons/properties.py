"""Phonon properties through phonopy from force constants, model-vs-DFT comparison, plots, and
the relax-then-phonons workflow (as the MDR phonon benchmark).

Harmonic properties from the dynamical matrix D(q) = Σ_j Φ_0j e^{iq·R_j}/√(m_0 m_j):
ω_qν² = eig D(q); frequencies ν = ω/2π in THz (imaginary modes reported as negative ν).
Thermal properties per mole of primitive cells (phonopy units), on a q mesh:

    F  = Σ_qν [ħω/2 + k_B T ln(1 − e^{−ħω/k_BT})]                 [kJ/mol]
    S  = Σ_qν [−k_B ln(1 − e^{−x}) + k_B x/(e^{x} − 1)],  x = ħω/k_BT   [J/K/mol]
    Cv = Σ_qν k_B x² e^{x}/(e^{x} − 1)²                             [J/K/mol]

Ref.: A. Togo, J. Phys. Soc. Jpn. 92, 012001 (2023) (phonopy); Loew et al., "Universal
machine learning interatomic potentials are ready for phonons", npj Comput. Mater. (2025) (MDR
phonon benchmark: relax, then FC2 on the DFT supercell, compare ν_max, S, F, Cv at 300 K).
Band-structure and DOS plots: `curvax.phonons.plots`; relaxation first: `curvax.relax.ase`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from curvax.io import atomic_write

__all__ = ["phonon_properties", "compare", "total_dos", "write_properties", "COMPARED",
           "IMAGINARY_THRESHOLD_THZ", "DEFAULT_MESH"]

IMAGINARY_THRESHOLD_THZ = -0.05   # ν below this on the mesh counts as an imaginary mode [THz]
DEFAULT_MESH = 50.0               # phonopy length-based mesh density [Å]; or 3 ints


def phonon_properties(phonon, temperature=300.0, mesh=DEFAULT_MESH, with_dos: bool = False) -> dict:
    """Harmonic properties of a `phonopy.Phonopy` with force constants.

    temperature: one value or a list [K]. mesh: length [Å] or 3 ints (Γ-centred, so Γ and the
    symmetry reduction are kept). Returns a JSON-able dict:
    max_frequency / min_frequency [THz] over the mesh, has_imaginary (min < −0.05 THz),
    n_imaginary (mesh modes below the threshold), temperatures [K], free_energy [kJ/mol],
    entropy, heat_capacity [J/K/mol] (per mole of primitive cells; lists when `temperature`
    is a list, floats otherwise), mesh (the grid used), and with `with_dos` the total DOS.
    """
    if phonon.force_constants is None:
        raise ValueError("phonon has no force constants")
    scalar = np.ndim(temperature) == 0
    temps = np.atleast_1d(np.asarray(temperature, dtype=float))
    phonon.run_mesh(mesh, with_eigenvectors=False, is_mesh_symmetry=True, is_gamma_center=True)
    freqs = np.asarray(phonon.mesh.frequencies)
    if not np.all(np.isfinite(freqs)):
        raise ValueError("non-finite phonon frequencies (NaN/inf force constants)")
    weights = np.asarray(phonon.mesh.weights)
    # Γ acoustic modes (ν = 0 up to round-off) excluded: they would add k_B T ln(hν/k_B T) terms
    phonon.run_thermal_properties(temperatures=temps, exclude_gamma_acoustic=True)
    t = phonon.thermal_properties
    tp = {"temperatures": t.temperatures, "free_energy": t.free_energy, "entropy": t.entropy,
          "heat_capacity": t.heat_capacity}
    pick = (lambda a: float(a[0])) if scalar else (lambda a: [float(x) for x in a])
    n_imag = int((weights[:, None] * (freqs < IMAGINARY_THRESHOLD_THZ)).sum())
    out = {
        "max_frequency": float(freqs.max()),
        "min_frequency": float(freqs.min()),
        "has_imaginary": bool(freqs.min() < IMAGINARY_THRESHOLD_THZ),
        "n_imaginary": n_imag,
        "temperatures": pick(tp["temperatures"]),
        "free_energy": pick(tp["free_energy"]),
        "entropy": pick(tp["entropy"]),
        "heat_capacity": pick(tp["heat_capacity"]),
        "mesh": [int(m) for m in phonon.mesh.mesh_numbers],
        "units": {"frequency": "THz", "free_energy": "kJ/mol", "entropy": "J/K/mol",
                  "heat_capacity": "J/K/mol", "temperature": "K"},
    }
    if with_dos:
        f, d = total_dos(phonon, mesh)
        out["dos"] = {"frequency": f.tolist(), "dos": d.tolist()}
    return out


COMPARED = ("max_frequency", "entropy", "free_energy", "heat_capacity")


def compare(model_props: dict, dft_props: dict) -> dict:
    """Model − DFT errors of `phonon_properties` outputs (at the same temperature):
    {name: {"model", "dft", "error", "abs_error", "rel_error"}} for max_frequency [THz],
    entropy, heat_capacity [J/K/mol], free_energy [kJ/mol]; plus "imaginary" flags."""
    out = {}
    for k in COMPARED:
        m, d = model_props[k], dft_props[k]
        if isinstance(m, list) or isinstance(d, list):
            raise ValueError(f"compare: {k} must be a scalar (one temperature)")
        err = float(m) - float(d)
        out[k] = {"model": float(m), "dft": float(d), "error": err, "abs_error": abs(err),
                  "rel_error": abs(err) / abs(d) if d else float("nan")}
    out["imaginary"] = {"model": bool(model_props["has_imaginary"]), "dft": bool(dft_props["has_imaginary"])}
    return out


def total_dos(phonon, mesh=DEFAULT_MESH, sigma=None):
    """Total phonon DOS on `mesh` (tetrahedron method unless `sigma`) -> (ν [THz], g [1/THz])."""
    phonon.run_mesh(mesh, with_eigenvectors=False, is_mesh_symmetry=True, is_gamma_center=True)
    phonon.run_total_dos(sigma=sigma)
    d = phonon.total_dos
    return np.asarray(d.frequency_points), np.asarray(d.dos)


def write_properties(props: dict, errors: dict | None, out_dir) -> tuple[Path, Path]:
    """properties.json and properties.txt (a table) in `out_dir`."""
    out_dir = Path(out_dir)
    blob = {"properties": props, "errors": errors}
    atomic_write(out_dir / "properties.json", json.dumps(blob, indent=2))
    rows = [("max_frequency", "THz"), ("min_frequency", "THz"), ("free_energy", "kJ/mol"),
            ("entropy", "J/K/mol"), ("heat_capacity", "J/K/mol")]
    labels = list(props)
    lines = [f"{'property':<16}{'unit':<10}" + "".join(f"{lab:>14}" for lab in labels)
             + (f"{'error':>14}{'rel.err':>10}" if errors else "")]
    for key, unit in rows:
        line = f"{key:<16}{unit:<10}" + "".join(f"{props[lab][key]:>14.4f}" for lab in labels)
        if errors and key in errors:
            line += f"{errors[key]['error']:>14.4f}{errors[key]['rel_error']:>10.2%}"
        lines.append(line)
    lines.append(f"{'imaginary':<16}{'':<10}" + "".join(f"{str(props[lab]['has_imaginary']):>14}" for lab in labels))
    t = next(iter(props.values()))["temperatures"]
    lines.insert(0, f"# harmonic phonon properties at T = {t} K (per mole of primitive cells)")
    atomic_write(out_dir / "properties.txt", "\n".join(lines) + "\n")
    return out_dir / "properties.json", out_dir / "properties.txt"
