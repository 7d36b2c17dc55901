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
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["phonon_properties", "compare", "band_structure", "total_dos", "plot_bands_dos",
           "relax_atoms", "load_potential", "IMAGINARY_THRESHOLD_THZ", "DEFAULT_MESH"]

IMAGINARY_THRESHOLD_THZ = -0.05   # ν below this on the mesh counts as an imaginary mode [THz]
DEFAULT_MESH = 50.0               # phonopy length-based mesh density [Å]; or 3 ints


def load_potential(name_or_path, x64: bool | None = None):
    """Nequix model by path or name (`resolve_model_path`), float32 as shipped, cast to float64
    when `x64` (default: whether jax x64 is enabled). The .nqx leaves are float32, so they are
    read with x64 off."""
    import jax
    import jax.numpy as jnp

    from curvax.potentials import load_nequix

    if x64 is None:
        x64 = bool(jax.config.jax_enable_x64)
    with jax.enable_x64(False):
        pot = load_nequix(str(name_or_path))
    return pot.astype(jnp.float64) if x64 else pot


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


def band_structure(phonon, npoints: int = 51, path=None):
    """Bands on seekpath's automatic path (phonopy `auto_band_structure`, needs `seekpath`),
    or on `path` = (qpoints list of segments, labels, connections) from another phonon so two
    band structures share one path. Returns (distances, frequencies [THz], labels, path)."""
    if path is None:
        try:
            import seekpath  # noqa: F401
        except ImportError as e:
            raise ImportError("automatic band paths need seekpath: pip install seekpath==2.1.0") from e
        from phonopy.phonon.band_structure import get_band_qpoints_by_seekpath

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # seekpath vs spglib ≥ 2.5
            bands, labels, connections = get_band_qpoints_by_seekpath(phonon.primitive, npoints,
                                                                      is_const_interval=True)
        path = (bands, labels, connections)
    bands, labels, connections = path
    phonon.run_band_structure(bands, path_connections=connections, labels=labels)
    bs = phonon.band_structure
    return bs.distances, bs.frequencies, labels, path


def total_dos(phonon, mesh=DEFAULT_MESH, sigma=None):
    """Total phonon DOS on `mesh` (tetrahedron method unless `sigma`) -> (ν [THz], g [1/THz])."""
    phonon.run_mesh(mesh, with_eigenvectors=False, is_mesh_symmetry=True, is_gamma_center=True)
    phonon.run_total_dos(sigma=sigma)
    d = phonon.total_dos
    return np.asarray(d.frequency_points), np.asarray(d.dos)


def plot_bands_dos(phonons: dict, filename, mesh=DEFAULT_MESH, npoints: int = 51, title=None):
    """PNG of band structures (left) and DOS (right), all `phonons` {label: Phonopy} overlaid on
    the first one's seekpath path (same fractional q)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_d) = plt.subplots(1, 2, figsize=(10, 5), sharey=True,
                                     gridspec_kw={"width_ratios": [3, 1], "wspace": 0.05})
    path = dist = None
    colors = ["k", "tab:red", "tab:blue", "tab:green"]
    for c, (label, ph) in zip(colors, phonons.items()):
        d, freqs, labels, path = band_structure(ph, npoints, path)
        dist = d if dist is None else dist  # same fractional q: share the first one's x axis
        for k, (x, f) in enumerate(zip(dist, freqs)):
            lines = ax_b.plot(x, f, color=c, lw=1)
            if k == 0:
                lines[0].set_label(label)  # one legend entry per data set
        fp, g = total_dos(ph, mesh)
        ax_d.plot(g / g.max(), fp, color=c, lw=1)
    # ticks at segment ends
    ticks = [dist[0][0]] + [d[-1] for d in dist]
    ax_b.set_xticks(ticks)
    names = _tick_labels(path[1], path[2])
    if len(names) == len(ticks):
        ax_b.set_xticklabels([n.replace("GAMMA", "Γ") for n in names])
    for t in ticks:
        ax_b.axvline(t, color="0.7", lw=0.5)
    ax_b.axhline(0, color="0.7", lw=0.5)
    ax_b.set_xlim(ticks[0], ticks[-1])
    ax_b.set_ylabel("frequency (THz)")
    ax_b.legend(loc="best", fontsize=8)
    ax_d.set_xlabel("DOS (norm.)")
    if title:
        fig.suptitle(title)
    fig.savefig(filename, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(filename)


def _tick_labels(labels, connections):
    out, k = [labels[0]], 1
    for conn in connections:
        if conn:
            out.append(labels[k])
            k += 1
        elif k + 1 < len(labels):
            out.append(f"{labels[k]}|{labels[k + 1]}")
            k += 2
        else:
            out.append(labels[k])
            k += 1
    return out


def _single_thread_blas():
    """FrechetCellFilter does many 3×3 scipy logm/expm_frechet solves per step; a multi-threaded
    OpenBLAS spinning against JAX's threads makes each take milliseconds (6× slower relaxations
    measured on 2 cores). Limit BLAS to one thread when threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def relax_atoms(atoms, potential, fmax: float = 1e-3, steps: int = 1000, cell: bool = True,
                capacity_multiplier: float = 2.0):
    """Relax positions (+ cell with `FrechetCellFilter`) by ASE FIRE with `curvax.ase.Calculator`.
    fmax [eV/Å] applies to forces and to the filter's cell forces. The neighbour list gets
    `capacity_multiplier` × the initial pair count, so a shrinking cell does not overflow it
    (each re-allocation recompiles the model). Returns a new Atoms; raises ValueError if not
    converged in `steps`."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from curvax.ase import Calculator

    a = atoms.copy()
    a.calc = Calculator(potential, capacity_multiplier=capacity_multiplier)
    obj = FrechetCellFilter(a) if cell else a
    with warnings.catch_warnings(), _single_thread_blas():
        warnings.simplefilter("ignore")
        opt = FIRE(obj, logfile=None)
        ok = opt.run(fmax=fmax, steps=steps)
    if not ok:
        fm = float(np.abs(a.get_forces()).max())
        raise ValueError(f"relaxation not converged in {steps} FIRE steps (max |F| = {fm:.2e} eV/Å)")
    a.calc = None
    return a


def write_properties(props: dict, errors: dict | None, out_dir) -> tuple[Path, Path]:
    """properties.json and properties.txt (a table) in `out_dir`."""
    out_dir = Path(out_dir)
    blob = {"properties": props, "errors": errors}
    (out_dir / "properties.json").write_text(json.dumps(blob, indent=2))
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
    (out_dir / "properties.txt").write_text("\n".join(lines) + "\n")
    return out_dir / "properties.json", out_dir / "properties.txt"
