"""Energy/force/stress training frames ("upstream" data) for co-training against forgetting.

Sources:
- extxyz, ASE databases (.db), vasprun.xml: anything `ase.io.read(path, ":")` reads with a
  calculator holding energy (eV) and forces (eV/Å), optionally stress (eV/Å³, ASE sign);
- pseudo-labels: structures (e.g. DFT-relaxed crystals read by `curvax.relax.data.load_dft_relaxed`),
  perturbed by `curvax.relax.data.perturb`, labelled with the *frozen base model's* own E/F/S. Co-training on
  these keeps the fine-tuned model close to the base model away from the phonon data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import equinox as eqx
import jax.numpy as jnp

from curvax.batch import Batch, graph_of, map_in_chunks
from curvax.derivatives import energy_forces_stress, to_voigt
from curvax.system import from_atoms


def read_frames(path) -> list:
    """Labelled frames from extxyz / .db / vasprun.xml. Raises naming the file and frame on bad data."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream data file not found: {path}")
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as e:
        raise ValueError(f"{path}: cannot read frames ({type(e).__name__}: {e})") from e
    for k, a in enumerate(frames):
        if a.calc is None:
            raise ValueError(f"{path}: frame {k} has no energy/forces labels")
        try:
            e, f = a.get_potential_energy(), a.get_forces()
        except Exception as err:
            raise ValueError(f"{path}: frame {k} lacks energy or forces ({err})") from err
        if not (np.isfinite(e) and np.all(np.isfinite(f))):
            raise ValueError(f"{path}: frame {k} has non-finite energy or forces")
    return frames


@eqx.filter_jit
def _efs(potential, batch: Batch):
    def one(s):
        _, ei, f, sigma = energy_forces_stress(potential, s.system, s.graph)
        return (jnp.sum(jnp.where(s.node_mask, ei, 0.0)),
                jnp.where(s.node_mask[:, None], f, jnp.nan), to_voigt(sigma))

    return eqx.filter_vmap(one)(batch)


def pseudo_label(potential, batch: Batch, chunk: int = 16) -> Batch:
    """Replace the labels of a padded batch by the (frozen) potential's own E, F, σ, `chunk`
    structures per compiled call (`batch.map_in_chunks`)."""
    e, f, s = map_in_chunks(lambda b: _efs(potential, b), batch, chunk)
    return batch._replace(energy=e, forces=f, stress=s)


def frames_to_structures(frames: list, cutoff: float, where: str = "upstream") -> list:
    """Unpadded (system, graph, labels) tuples of labelled frames, for `pad_structure`."""
    out = []
    for k, a in enumerate(frames):
        s = from_atoms(a)
        g = graph_of(s, cutoff, where=f"{where} frame {k}")
        try:
            stress = a.get_stress(voigt=True)
        except Exception:
            stress = None
        out.append((s, g, dict(energy=a.get_potential_energy(), forces=a.get_forces(), stress=stress)))
    return out
