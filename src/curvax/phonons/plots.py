"""Band-structure + DOS figures of one or several phonopy objects (model vs DFT overlaid)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from curvax.io import atomic_write
from curvax.phonons.properties import DEFAULT_MESH, total_dos


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
        # the DOS grid extends beyond the modes; drawn there, the tail below 0 would read like
        # imaginary modes: keep the range the mesh frequencies span
        freqs = np.asarray(ph.mesh.frequencies)
        keep = (fp >= min(0.0, float(freqs.min()))) & (fp <= float(freqs.max()))
        ax_d.plot(g[keep] / g.max(), fp[keep], color=c, lw=1)
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
    atomic_write(filename, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
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
