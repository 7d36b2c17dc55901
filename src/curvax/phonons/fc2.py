"""Second-order force constants (FC2) in phonopy's layout by exact Hessian-vector products.

    Φ_{iα,jβ} = ∂²E / ∂u_iα ∂u_jβ   [eV/Å²],   full (Ns, Ns, 3, 3), compact (Np, Ns, 3, 3)

Finite displacements compute F(u) for each of phonopy's symmetry-reduced displacements u and
fit Φ ≈ −F/u. Here the same minimal displacement set (`Phonopy.generate_displacements`, one
displaced atom per symmetry-independent site and direction) is fed the *exact* linear-response
forces F = −H·u, obtained as Hessian-vector products (forward-over-reverse, all in one
linearisation, `curvax.hessian.hessian_columns`). Forces are exactly linear in u, so phonopy's
symmetry solver (site-symmetry expansion + distribution to equivalent atoms) reconstructs the
columns it was not given without truncation error; the acoustic sum rule Σ_j Φ_ij = 0 and
Φ_ij = Φ_jiᵀ are then imposed by phonopy's projection (`symmetrize_force_constants`).
The graph (neighbour list, periodic images) is frozen at the equilibrium supercell, as for the
Hessian at fixed cell. Cost: K HVPs, K = number of phonopy displacements (a few for cubic
crystals, ≤ 3 Np for P1), instead of 3 Ns columns of the dense Hessian.
Shape buckets (`bucket=True`): the supercell is padded to a few sizes (atoms to a multiple of
32, edges up a ×1.5 ladder; padded atoms have no edges and no energy) and the HVPs run in
fixed chunks, so materials of similar size and every model of one architecture (parameters
are arguments of the compiled program) share one compilation.
Ref.: A. Togo, I. Tanaka, Scr. Mater. 108, 1 (2015) (phonopy); B. Pearlmutter,
Neural Comput. 6, 147 (1994) (HVP).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from curvax import parallel
from curvax.batch import bucket_shape, graph_of, pad_structure
from curvax.compilation import stored_jit
from curvax.hessian import hessian, hessian_columns
from curvax.neighbors import allocate
from curvax.phonons.convert import atoms_to_phonopy, phonopy_to_atoms
from curvax.potentials.base import parameter_dtype
from curvax.system import from_atoms

__all__ = [
    "FC2Result", "force_constants", "force_constants_from_atoms", "dense_force_constants",
    "finite_displacement_force_constants", "acoustic_sum_rule_violation", "supercell_shape",
    "displacement_probes", "force_constants_from_hvps", "unitcell_force_constants",
]


class FC2Result(NamedTuple):
    """Force constants and what they cost."""
    force_constants: np.ndarray   # (Ns, Ns, 3, 3) full or (Np, Ns, 3, 3) compact [eV/Å²]
    n_hvp: int                     # Hessian-vector products evaluated (= phonopy displacements)
    n_atoms: int                   # supercell atoms Ns


def _supercell_system(phonon, potential, dtype=None):
    atoms = phonopy_to_atoms(phonon.supercell)
    dtype = dtype or parameter_dtype(potential)
    system = from_atoms(atoms, dtype=dtype)
    _, graph = allocate(system, potential.cutoff)
    return system, graph


@stored_jit  # the traced program is kept with the CLI's compilation cache (curvax.compilation)
def _columns(potential, system, graph, vs, chunk):
    return hessian_columns(potential, system, graph, vs, chunk)


def supercell_shape(phonon, cutoff: float) -> tuple[int, int]:
    """(atoms, edges) of `phonon.supercell`'s graph at `cutoff` [Å] (for a common `bucket`)."""
    system = from_atoms(phonopy_to_atoms(phonon.supercell))
    return system.positions.shape[0], int(np.sum(np.asarray(graph_of(system, cutoff).mask)))


def _chunked_columns(potential, system, graph, vs, width, progress=None):
    """H·v of `vs` (K, N, 3), `width` probes per compiled call (the last call zero-padded, so all
    calls share one program); `progress.update` after each call."""
    out = []
    for c in range(0, len(vs), width):
        part = np.zeros((width,) + vs.shape[1:], vs.dtype)
        n = len(vs[c:c + width])
        part[:n] = vs[c:c + width]
        out.append(np.asarray(_columns(potential, system, graph, jnp.asarray(part), width))[:n])
        if progress is not None:
            progress.update(n)
    return np.concatenate(out)


def _bucketed_columns(potential, system, graph, vs, chunk, shape=None, progress=None):
    """H·v of `vs` (K, N, 3) on the structure padded to `shape` (atoms, edges; default, or when
    the structure does not fit: `bucket_shape`), `chunk` probes per compiled call."""
    n, k = vs.shape[1], vs.shape[0]
    n_edges = int(np.sum(np.asarray(graph.mask)))
    if shape is None or n > shape[0] or n_edges > shape[1]:
        shape = bucket_shape(n, n_edges)
    n_pad, e_pad = shape
    padded = pad_structure(system, graph, n_pad, e_pad)
    sys_p = padded.system._replace(positions=jnp.asarray(padded.system.positions))
    vs_p = np.zeros((k, n_pad, 3), dtype=np.asarray(vs).dtype)
    vs_p[:, :n] = vs
    return _chunked_columns(potential, sys_p, padded.graph, vs_p, chunk, progress)[:, :n]


def _fresh_phonopy(phonon):
    """A copy of `phonon`'s structure and matrices without dataset or force constants."""
    from phonopy import Phonopy

    return Phonopy(phonon.unitcell, supercell_matrix=phonon.supercell_matrix,
                   primitive_matrix=phonon.primitive_matrix, symprec=phonon.symmetry.tolerance,
                   log_level=0)


def force_constants(phonon, potential, compact: bool = False, symmetrize: bool = True,
                    chunk: int = 16, dtype=None, assign: bool = True, bucket=False, progress=None,
                    mesh=None) -> FC2Result:
    """FC2 of `phonon.supercell` under `potential` from HVPs on phonopy's minimal displacements.

    phonon: a `phonopy.Phonopy` (its unit cell, supercell and primitive matrices and symmetry
    are used; its dataset is not touched). compact: (Np, Ns, 3, 3) instead of (Ns, Ns, 3, 3).
    symmetrize: impose the acoustic sum rule and index symmetry (phonopy's projection).
    chunk: HVPs evaluated together (memory ∝ chunk). dtype: of the positions (default: the
    potential's). assign: also set `phonon.force_constants`. bucket: True pads to `bucket_shape`, an
    (atoms, edges) pair (e.g. `common_shape` of a set of materials) pads to that shape; either
    way `chunk` HVPs are evaluated per compiled call (compile once for many materials and models).
    progress: a tqdm-like bar (`total`, `update(n)`) advanced per chunk of HVPs.
    mesh (`curvax.parallel.data_mesh`): the HVPs split over its devices, `chunk` per device per
    call with `progress` (bucket is not used).
    Returns `FC2Result(force_constants [eV/Å²], n_hvp, n_atoms)`.
    """
    work, vs = displacement_probes(phonon, dtype or parameter_dtype(potential))
    system, graph = _supercell_system(work, potential, dtype)
    if progress is not None:
        progress.total = len(vs)
        progress.refresh()
    if mesh is not None:
        hv = np.asarray(parallel.map_over_devices(lambda v: hessian_columns(potential, system, graph, v, chunk),
                                                 vs, mesh, block=chunk if progress is not None else None,
                                                 progress=progress))
    elif bucket is not False and bucket is not None:
        hv = _bucketed_columns(potential, system, graph, vs, chunk, None if bucket is True else tuple(bucket),
                               progress)
    elif progress is not None:
        hv = _chunked_columns(potential, system, graph, vs, min(chunk, len(vs)), progress)
    else:
        hv = _columns(potential, system, graph, jnp.asarray(vs), chunk)
    fc = force_constants_from_hvps(work, hv, compact, symmetrize)
    if assign:
        phonon.force_constants = fc
    return FC2Result(fc, len(vs), system.positions.shape[0])


def displacement_probes(phonon, dtype=np.float32):
    """phonopy's minimal symmetry-reduced displacement set as HVP probes.

    Returns (work, vs): `work` a fresh copy of `phonon` holding the displacement dataset
    (u = 0.01 Å, phonopy's default; the force constants do not depend on it, F = −H·u is
    linear), and `vs` (K, Ns, 3) the displacement fields [Å], one displaced atom each."""
    work = _fresh_phonopy(phonon)
    work.generate_displacements(distance=0.01, is_plusminus=False)
    disps = work.displacements  # [[atom, ux, uy, uz], ...]
    vs = np.zeros((len(disps), len(work.supercell), 3))
    for k, d in enumerate(disps):
        vs[k, int(d[0])] = d[1:4]
    return work, vs.astype(dtype)


def force_constants_from_hvps(work, hv, compact: bool = False, symmetrize: bool = True) -> np.ndarray:
    """FC2 [eV/Å²] from the HVPs `hv` (K, Ns, 3) of `displacement_probes`' `vs`: phonopy fits
    Φ to the forces F = −H·u and (with `symmetrize`) imposes the sum rule and index symmetry."""
    work.forces = -np.asarray(hv, dtype=np.float64)
    work.produce_force_constants(calculate_full_force_constants=not compact, show_drift=False)
    if symmetrize:
        work.symmetrize_force_constants(show_drift=False)
    fc = np.array(work.force_constants)
    if not np.all(np.isfinite(fc)):
        raise ValueError("non-finite force constants (NaN/inf in the model's Hessian)")
    return fc


def unitcell_force_constants(phonon, fc=None) -> np.ndarray:
    """Force constants of the unit cell's own periodic lattice, folded from the supercell's:

        Φ_u(a, b) = Σ_{j ≡ b} Φ_S(a, j)      [eV/Å²]   (a, b unit-cell atoms; j over the
                                                          supercell atoms that are images of b)

    the Hessian of the crystal under displacements with the unit cell's periodicity, i.e. the
    model's Hessian of the unit cell as a periodic structure. Exact for the q points
    commensurate with the unit cell (Γ for the primitive cell, plus zone-boundary points for a
    conventional one); the other q points of the supercell are summed out. phonon: a
    `phonopy.Phonopy` with full force constants (or `fc` (Ns, Ns, 3, 3)). Returns (Nu, Nu, 3, 3),
    atoms in the order of `phonon.unitcell`."""
    fc = np.asarray(phonon.force_constants if fc is None else fc)
    if fc.shape[0] != fc.shape[1]:
        raise ValueError(f"full (Ns, Ns, 3, 3) force constants needed to fold, got {fc.shape}")
    u2s = np.asarray(phonon.supercell.u2s_map)
    s2u = np.asarray(phonon.supercell.s2u_map)  # supercell atom -> its unit-cell image (a supercell index)
    index = {int(j): b for b, j in enumerate(u2s)}
    col = np.array([index[int(j)] for j in s2u])  # unit-cell index b of every supercell atom j
    out = np.zeros((len(u2s), len(u2s), 3, 3))
    np.add.at(out, (slice(None), col), fc[u2s])
    return out


def force_constants_from_atoms(atoms, supercell_matrix, potential, primitive_matrix="auto",
                               symprec: float = 1e-5, **kw):
    """Build a `phonopy.Phonopy` for `atoms` (unit cell) and `supercell_matrix` (3 ints or 3×3)
    and set its FC2 by `force_constants`. Returns `(phonon, FC2Result)`."""
    import warnings

    from phonopy import Phonopy

    smat = np.asarray(supercell_matrix, dtype=int)
    if smat.shape == (3,):
        smat = np.diag(smat)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*primitive_matrix defaulted.*")
        phonon = Phonopy(atoms_to_phonopy(atoms), supercell_matrix=smat,
                         primitive_matrix=primitive_matrix, symprec=symprec, log_level=0)
    return phonon, force_constants(phonon, potential, **kw)


def dense_force_constants(phonon, potential, chunk: int = 16, dtype=None) -> np.ndarray:
    """All 3Ns Hessian columns, no symmetry (reference; `curvax.hessian.hessian`) [eV/Å²]."""
    system, graph = _supercell_system(phonon, potential, dtype)
    return np.asarray(hessian(potential, system, graph, chunk), dtype=np.float64)


def finite_displacement_force_constants(phonon, calc, distance: float = 0.01, is_plusminus=True,
                                        compact: bool = False, symmetrize: bool = True):
    """FC2 by phonopy's finite displacements with an ASE calculator `calc` (e.g.
    `curvax.ase.Calculator(potential)`): Φ fitted to F(±u). Central differences (±u) have a
    truncation error O(u²·∂⁴E). Returns `(fc [eV/Å²], n_force_calls)`."""
    work = _fresh_phonopy(phonon)
    work.generate_displacements(distance=distance, is_plusminus=is_plusminus)
    forces = []
    for sc in work.supercells_with_displacements:
        atoms = phonopy_to_atoms(sc)
        atoms.calc = calc
        forces.append(np.array(atoms.get_forces(), dtype=np.float64))
    work.forces = np.array(forces)
    work.produce_force_constants(calculate_full_force_constants=not compact, show_drift=False)
    if symmetrize:
        work.symmetrize_force_constants(show_drift=False)
    return np.array(work.force_constants), len(forces)


def acoustic_sum_rule_violation(fc) -> float:
    """max_i,αβ |Σ_j Φ_{iα,jβ}| [eV/Å²] (zero for translation-invariant FC)."""
    return float(np.abs(np.asarray(fc).sum(axis=1)).max())
