"""Third-order force constants (FC3) by automatic differentiation, fed to phono3py for RTA κ.

    Φ3_{iα,jβ,kγ} = ∂³E / ∂u_iα ∂u_jβ ∂u_kγ          [eV/Å³]
    T[a, b]       = d/dt (H(x + t a) b)|_{t=0}        (directional derivative of the Hessian:
                                                        jvp over the HVP; one (N,3) column of Φ3)

Choice (documented): phono3py's symmetry-reduced displacement dataset decides *which* third
derivatives are needed (one first displacement u1 per irreducible atom/direction, second
displacements u2 only for symmetry-independent pairs, optionally within a pair cutoff). For every
supercell of that dataset we give phono3py the forces of the exact third-order expansion,
*without* the terms that are even in a single displacement:

    first  (u1):       F = −H u1
    pair   (u1 + u2):  F = −H (u1 + u2) − T[u1, u2]

so that phono3py's finite-difference formulas (Φ2(u1) from F(u1+u2) − F(u1), then
Φ3 = (Φ2(u1) − Φ2(0)) / u1) are exact: no truncation error, no dependence on the displacement
amplitude, no round-off from subtracting nearly equal forces. phono3py's solver then expands the
irreducible columns by site symmetry and distributes them to equivalent atoms (and symmetrises).
Cost: one jvp-of-HVP per supercell of the dataset (≈ the number of force calls of phono3py's own
finite-displacement run, e.g. 111 for Si 2×2×2 conventional), evaluated in chunks (jax.lax.map)
from one compiled function. FC2 is the exact compact Hessian: 3 N_prim HVPs (rows of primitive
atoms, no fitting). The neighbour graph is frozen at the equilibrium supercell (derivatives at
fixed cell, as in `curvax.hessian`).
Refs.: A. Togo, L. Chaput, I. Tanaka, Phys. Rev. B 91, 094306 (2015) (phono3py);
A. Togo, J. Phys. Soc. Jpn. 92, 012001 (2023).
"""
from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax import parallel
from curvax.calculator import compute
from curvax.derivatives import position_energy_fn
from curvax.neighbors import allocate
from curvax.phonons.convert import phonopy_to_atoms
from curvax.potentials.base import check_species, parameter_dtype
from curvax.system import from_atoms

EV_A3 = "eV/Å³"


class FC3Result(NamedTuple):
    fc3: np.ndarray  # compact (Np, Ns, Ns, 3, 3, 3) or full (Ns, Ns, Ns, 3, 3, 3) [eV/Å³]
    fc2: np.ndarray  # compact (Np, Ns2, 3, 3) [eV/Å²] (phonon supercell)
    n_third_order: int  # jvp-of-HVP products (= supercells of the dataset)
    n_hvp: int  # HVPs for FC2


def _setup(potential, cell):
    atoms = phonopy_to_atoms(cell)
    check_species(potential, atoms.numbers, where="phono3py supercell")
    system = from_atoms(atoms, dtype=parameter_dtype(potential))
    _, graph = allocate(system, potential.cutoff)
    return system, graph


@eqx.filter_jit
def third_order_products(potential, system, graph, u1s, u2s, chunk: int = 4):
    """(H u2, T[u1, u2]) for batches u1s, u2s of shape (K, N, 3): forward-over-forward-over-reverse."""
    grad = jax.grad(position_energy_fn(potential, system, graph))

    def one(args):
        u1, u2 = args
        return jax.jvp(lambda x: jax.jvp(grad, (x,), (u2,))[1], (system.positions,), (u1,))

    return jax.lax.map(one, (u1s, u2s), batch_size=min(chunk, u1s.shape[0]))


def _dataset_pairs(dataset, n_atoms):
    """Per supercell of a phono3py type-1 dataset: (row, u1 (N,3), u2 (N,3)), u2 = 0 for first ones."""
    rows = []
    k = 0
    firsts = dataset["first_atoms"]
    for f in firsts:
        u1 = np.zeros((n_atoms, 3))
        u1[f["number"]] = f["displacement"]
        rows.append((f.get("id", k + 1) - 1, u1, np.zeros((n_atoms, 3)), True))
        k += 1
    for f in firsts:
        u1 = np.zeros((n_atoms, 3))
        u1[f["number"]] = f["displacement"]
        for s in f["second_atoms"]:
            u2 = np.zeros((n_atoms, 3))
            u2[s["number"]] = s["displacement"]
            rows.append((s.get("id", k + 1) - 1, u1, u2, s.get("included", True)))
            k += 1
    return rows


def _products(potential, system, graph, u1s, u2s, chunk, progress, mesh=None):
    """`third_order_products` of all rows; with `progress` (tqdm-like), `chunk` rows per call
    (the last one padded, so one compiled program) and the bar advanced after each; with `mesh`
    (`curvax.parallel.data_mesh`) `chunk` rows per device per call, split over its devices."""
    if mesh is not None:
        return parallel.map_over_devices(
            lambda uu: third_order_products(potential, system, graph, uu[:, 0], uu[:, 1], chunk),
            jnp.stack([u1s, u2s], axis=1), mesh, block=chunk if progress is not None else None,
            progress=progress)
    if progress is None:
        return third_order_products(potential, system, graph, u1s, u2s, chunk)
    k = u1s.shape[0]
    width = min(chunk, k)
    progress.total = k
    progress.refresh()
    hu, t = [], []
    for c in range(0, k, width):
        n = min(width, k - c)
        pad = [(0, width - n)] + [(0, 0)] * (u1s.ndim - 1)
        a, b = third_order_products(potential, system, graph, jnp.pad(u1s[c:c + n], pad),
                                    jnp.pad(u2s[c:c + n], pad), width)
        hu.append(np.asarray(a)[:n])
        t.append(np.asarray(b)[:n])
        progress.update(n)
    return np.concatenate(hu), np.concatenate(t)


def compute_fc3(ph3, potential, chunk: int = 4, is_compact_fc: bool = True,
                symmetrize: bool = True, assign: bool = True, progress=None, mesh=None) -> FC3Result:
    """Exact FC3 (and FC2) of `potential` for a `phono3py.Phono3py` object.

    Uses `ph3.dataset` (type 1: first/second displacements); if it has none, generates
    phono3py's default one. Sets `ph3.fc3`, `ph3.fc2` when `assign`. progress: a tqdm-like bar
    advanced per chunk of third-order products (one per displaced supercell). mesh
    (`curvax.parallel.data_mesh`): the products and HVPs split over its devices.
    """
    if ph3.dataset is None or "first_atoms" not in ph3.dataset:
        ph3.generate_displacements()
    system, graph = _setup(potential, ph3.supercell)
    n = system.positions.shape[0]
    rows = _dataset_pairs(ph3.dataset, n)
    n_sc = max(r[0] for r in rows) + 1
    dt = system.positions.dtype
    u1s = jnp.asarray(np.array([r[1] for r in rows]), dt)
    u2s = jnp.asarray(np.array([r[2] for r in rows]), dt)
    # H u1 for the first displacements: (u1 := 0, u2 := u1)
    nf = len(ph3.dataset["first_atoms"])
    hu, t = _products(potential, system, graph, jnp.concatenate([jnp.zeros_like(u1s[:nf]), u1s]),
                      jnp.concatenate([u1s[:nf], u2s]), chunk, progress, mesh)
    hu, t = np.asarray(hu, np.float64), np.asarray(t, np.float64)
    hu1, hu2, t = hu[:nf], hu[nf:], t[nf:]
    first_index = {}
    for k, f in enumerate(ph3.dataset["first_atoms"]):
        first_index[(f["number"], tuple(np.round(f["displacement"], 12)))] = k
    forces = np.zeros((n_sc, n, 3))
    for k, (row, u1, u2, included) in enumerate(rows):
        a = int(np.flatnonzero(np.any(u1 != 0, axis=1))[0])
        h1 = hu1[first_index[(a, tuple(np.round(u1[a], 12)))]]
        if k < nf:
            forces[row] = -h1
        elif included:
            forces[row] = -(h1 + hu2[k] + t[k])
    if not np.all(np.isfinite(forces)):
        raise ValueError("non-finite third-order products (NaN/inf in the model's derivatives)")
    ph3.forces = forces
    ph3.produce_fc3(symmetrize_fc3r=symmetrize, is_compact_fc=is_compact_fc)
    fc3 = np.array(ph3.fc3)
    fc2, n_hvp = compute_fc2(ph3, potential, chunk=max(chunk, 16), mesh=mesh)
    if not is_compact_fc:
        from phonopy.harmonic.force_constants import compact_fc_to_full_fc

        fc2 = compact_fc_to_full_fc(ph3.phonon_primitive, fc2)
    if assign:
        ph3.fc2 = fc2
    return FC3Result(fc3, fc2, len(rows), n_hvp)


def compute_fc2(ph3, potential, chunk: int = 16, mesh=None):
    """Exact compact FC2 (Np, Ns2, 3, 3): Hessian rows of the primitive atoms of the phonon
    supercell, symmetrised (index symmetry, acoustic sum rule) by phonopy."""
    from phonopy.harmonic.force_constants import symmetrize_compact_force_constants

    system, graph = _setup(potential, ph3.phonon_supercell)
    n = system.positions.shape[0]
    p2s = np.asarray(ph3.phonon_primitive.p2s_map)
    vs = np.zeros((3 * len(p2s), n, 3))
    for k, p in enumerate(p2s):
        for a in range(3):
            vs[3 * k + a, p, a] = 1.0
    vs = jnp.asarray(vs, system.positions.dtype)
    cols = parallel.map_over_devices(
        lambda v: third_order_products(potential, system, graph, jnp.zeros_like(v), v, chunk)[0], vs, mesh)
    cols = np.asarray(cols, np.float64).reshape(len(p2s), 3, n, 3)  # (p, α, j, β)
    fc2 = np.ascontiguousarray(cols.transpose(0, 2, 1, 3))
    # index symmetry + acoustic sum rule (phonopy's projection): float32 round-off of a few
    # 1e-6 eV/Å² breaks the ASR enough to spoil the acoustic modes near Γ that carry κ
    # (Nequix MP Si: κ = 10.7 W/m-K without, 55.8 with, for the same DFT FC3).
    symmetrize_compact_force_constants(fc2, ph3.phonon_primitive)
    return fc2, len(vs)


def finite_displacement_fc3(ph3, potential, distance: float = 0.03, is_plusminus=True):
    """Reference: phono3py's own finite displacements with `potential`'s forces (curvax calculator).
    Returns (fc3 compact, number of force calls). Truncation error O(distance²)."""
    import phono3py

    work = phono3py.Phono3py(ph3.unitcell, supercell_matrix=ph3.supercell_matrix,
                             primitive_matrix=ph3.primitive_matrix, log_level=0)
    work.generate_displacements(distance=distance, is_plusminus=is_plusminus)
    forces = []
    for sc in work.supercells_with_displacements:
        system = from_atoms(phonopy_to_atoms(sc), dtype=parameter_dtype(potential))
        res, _ = compute(potential, system)
        forces.append(np.asarray(res["forces"], np.float64))
    work.forces = np.array(forces)
    work.produce_fc3()
    return np.array(work.fc3), len(forces)


def kappa_rta(ph3, temperatures=(300.0,), mesh=(11, 11, 11), is_isotope: bool = False):
    """Lattice thermal conductivity in the RTA (phono3py) from `ph3.fc2`, `ph3.fc3`.

    Returns κ, shape (n_T, 6) [W/m-K], Voigt (xx, yy, zz, yz, xz, xy).
    """
    if ph3.fc2 is None or ph3.fc3 is None:
        raise ValueError("phono3py object has no fc2/fc3: call compute_fc3 or load force constants")
    ph3.mesh_numbers = list(mesh)
    ph3.init_phph_interaction()
    ph3.run_thermal_conductivity(temperatures=list(temperatures), is_isotope=is_isotope,
                                 write_kappa=False)
    return np.asarray(ph3.thermal_conductivity.kappa)[0]
