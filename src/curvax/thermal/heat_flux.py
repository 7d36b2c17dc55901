"""Heat flux of MLIPs by automatic differentiation: edge, unfolded and Hardy routes.

Definitions (energy barycentre form). With per-atom energies E_i = ½ m_i v_i² + U_i, the heat
flux of an isolated (or unfolded) system is the time derivative of the energy barycentre

    J = d/dt Σ_i R_i E_i = J_conv + J_pot
    J_conv = Σ_i E_i v_i                                          (convective)
    J_pot  = Σ_i Σ_j (R_i − R_j) (∂U_i/∂R_j · v_j)                (Hardy form, translation invariant)

where for a periodic crystal j runs over *all periodic images* j' of each atom (R_j' = R_j + S·cell,
v_j' = v_j) and i over the atoms of the cell. J is extensive (no division by the volume):
units eV·Å/fs with velocities in Å/fs, masses in amu, energies in eV (kinetic energies
½ m v² converted to eV). Green–Kubo uses κ = 1/(3 V k_B T²) ∫ ⟨J(0)·J(t)⟩ dt (see green_kubo.py).

Three routes for J_pot:

(a) edge ("atom-pair") flux, exact for one-step (pair-like, n_interactions = 1) potentials where
    U_i depends only on its own bond vectors r_ij = R_j − R_i:
        J_pot^edge = − Σ_{edges e=(i←j)} r_e (∂E/∂r_e · v_j)
    One reverse pass (the force pass gives ∂E/∂r_e). For message-passing potentials ∂E/∂r_e
    mixes the energies of several atoms and this formula is *not* the heat flux.
(b) unfolded flux, exact for any number of message-passing steps and linear in N:
    replicate all periodic images within the effective range n_interactions × cutoff (+ skin)
    of the cell into a non-periodic "unfolded" system; only the N original atoms carry
    energy. With the barycentre B(R) = Σ_i stop_grad(R_i) U_i(R),
        J_pot = ∂B/∂R · v  −  Σ_j R_j (∂U/∂R_j · v_j)
    = one forward-mode product (jvp of the per-atom energies along the unfolded velocities)
    plus the force pass (∂U/∂R_j of the unfolded system). Ref.: M. F. Langer, F. Knoop,
    C. Carbogno, M. Scheffler, M. Rupp, "Heat flux for semilocal machine-learning
    potentials", Phys. Rev. B 108, L100302 (2023); M. F. Langer, J. T. Frank, F. Knoop,
    "Stress and heat flux via automatic differentiation", J. Chem. Phys. 159, 174105 (2023)
    (the glp package).
(c) Hardy reference, O(N²): one reverse pass per atom i (∇ U_i over the unfolded system),
    then the double sum above. For tests only. Ref.: R. J. Hardy, J. Chem. Phys. 38, 522 (1963).

Sign convention: bond vectors r_ij = R_j − R_i (neighbour minus centre), as in `neighbors`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from curvax import neighbors
from curvax.derivatives import edge_gradients, forces_from_edges
from curvax.neighbors import edge_vectors
from curvax.potentials.base import check_species
from curvax.system import System

# ½ m v² [amu Å²/fs²] -> eV ; m a = F: a [Å/fs²] = F [eV/Å] / m [amu] * FS2
FS2 = units.fs ** 2  # (fs in ASE time units)² ≈ 9.649e-3


class HeatFlux(NamedTuple):
    """Result of one heat-flux evaluation (all jnp arrays)."""

    energy: jnp.ndarray  # () potential energy [eV]
    energies: jnp.ndarray  # (N,) per-atom potential energies U_i [eV]
    forces: jnp.ndarray  # (N, 3) [eV/Å]
    flux_potential: jnp.ndarray  # (3,) J_pot [eV Å/fs]
    flux_convective: jnp.ndarray  # (3,) J_conv = Σ (½ m v² + U_i) v_i [eV Å/fs]
    overflow: jnp.ndarray  # () True: neighbour list/unfolding must be re-allocated

    @property
    def flux(self):
        return self.flux_potential + self.flux_convective


def kinetic_energies(velocities, masses):
    """½ m_i v_i² [eV] for velocities in Å/fs and masses in amu."""
    return 0.5 * masses * jnp.sum(velocities * velocities, axis=-1) / FS2


def convective_flux(energies, velocities, masses):
    """J_conv = Σ_i (½ m_i v_i² + U_i) v_i [eV Å/fs]."""
    e = kinetic_energies(velocities, masses) + energies
    return jnp.sum(e[:, None] * velocities, axis=0)


# ----------------------------------------------------------------------------- (a) edge route

def edge_flux(potential, system: System, spec, velocities, masses) -> HeatFlux:
    """Edge ("atom-pair") flux J_pot = −Σ_e r_e (∂E/∂r_e · v_{j(e)}); exact only for one-step potentials."""
    graph = neighbors.build(system, spec)
    ei, r, g = edge_gradients(potential, system, graph)
    n = system.positions.shape[0]
    forces = forces_from_edges(g, graph, n)
    gv = jnp.sum(g * velocities[graph.senders], axis=-1)
    jpot = -jnp.sum(r * gv[:, None], axis=0)
    return HeatFlux(jnp.sum(ei), ei, forces, jpot, convective_flux(ei, velocities, masses),
                    graph.overflow)


# ----------------------------------------------------------------------------- unfolding

class Unfolding(NamedTuple):
    """Recipe of the unfolded system: replica m is atom `idx[m]` shifted by `offsets[m]`·cell.

    The first N entries are the original atoms (offset 0). `box` is a periodic box with
    ≥ 2(cutoff + skin) of vacuum around the replicas, used only to build the neighbour list of
    the (physically non-periodic) unfolded system with the O(N) cell list; `origin` maps the
    replicas into that box. `reference` are the positions at allocation: the recipe stays
    valid while no atom moves more than skin/2 from them.
    """

    idx: jnp.ndarray  # (M,) int32
    offsets: jnp.ndarray  # (M, 3) integer lattice offsets (float)
    origin: jnp.ndarray  # (3,)
    box: jnp.ndarray  # (3, 3)
    reference: jnp.ndarray  # (N, 3)
    skin: float


def replicas(positions, cell, pbc, radius: float, chunk: int = 4096):
    """(idx, offsets): all periodic images within `radius` of some atom of the cell (host side).

    The original atoms come first. A superset criterion would also be correct; this one is
    exact (Euclidean distance to the nearest original atom), which keeps the unfolded system
    as small as possible.
    """
    x = np.asarray(positions, dtype=np.float64)
    n = x.shape[0]
    if not any(pbc):
        return np.arange(n, dtype=np.int32), np.zeros((n, 3))
    cell = np.asarray(cell, dtype=np.float64)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
    span = np.ptp(x @ np.linalg.inv(cell), axis=0) if n > 1 else np.zeros(3)
    reach = [int(np.ceil(radius / s + sp)) + 1 for s, sp in zip(spacing, span)]
    grid = np.array(np.meshgrid(*[np.arange(-m, m + 1) for m in reach], indexing="ij")).reshape(3, -1).T
    grid = grid[np.any(grid != 0, axis=1)]
    idx, offs = [np.arange(n, dtype=np.int32)], [np.zeros((n, 3))]
    cand = (x[:, None, :] + (grid @ cell)[None]).reshape(-1, 3)  # (N*K, 3)
    cand_i = np.repeat(np.arange(n, dtype=np.int32), len(grid))
    cand_o = np.tile(grid, (n, 1)).astype(np.float64)
    keep = np.zeros(len(cand), bool)
    for s in range(0, len(cand), chunk):
        d2 = np.sum((cand[s:s + chunk, None, :] - x[None]) ** 2, axis=-1)
        keep[s:s + chunk] = d2.min(axis=1) <= radius ** 2
    idx.append(cand_i[keep])
    offs.append(cand_o[keep])
    return np.concatenate(idx), np.concatenate(offs)


def unfold(potential, system: System, skin: float = 0.5) -> Unfolding:
    """Allocate the unfolding for `system` (host side): images within n_interactions·cutoff + skin."""
    radius = potential.n_interactions * potential.cutoff + skin
    idx, offs = replicas(system.positions, system.cell, system.pbc, radius)
    cell = np.asarray(system.cell, dtype=np.float64)
    big = np.asarray(system.positions)[idx] + offs @ cell if any(system.pbc) else np.asarray(system.positions)
    margin = potential.cutoff + 2.0 * skin + 1.0
    lo, hi = big.min(axis=0) - margin, big.max(axis=0) + margin
    hi = np.maximum(hi, lo + 3.01 * potential.cutoff)  # ≥ 3 bins: O(M) cell list for large M
    dtype = system.positions.dtype
    return Unfolding(jnp.asarray(idx, jnp.int32), jnp.asarray(offs, dtype), jnp.asarray(lo, dtype),
                     jnp.asarray(np.diag(hi - lo), dtype), system.positions, float(skin))


def unfolded_system(system: System, unf: Unfolding) -> System:
    """The unfolded (replicated) system inside its vacuum box (periodic only for the neighbour list)."""
    cell = system.cell if any(system.pbc) else jnp.zeros((3, 3), system.positions.dtype)
    x = system.positions[unf.idx] + unf.offsets @ cell - unf.origin
    return System(x, unf.box, system.numbers[unf.idx], (True, True, True))


def unfolding_overflow(system: System, unf: Unfolding):
    """True if some atom moved more than skin/2 since allocation (the replica set may be stale)."""
    d = jnp.linalg.norm(system.positions - unf.reference, axis=-1)
    return jnp.max(d) > 0.5 * unf.skin


def allocate_unfolded(potential, big: System, capacity_multiplier: float = 1.25):
    """Neighbour spec of an unfolded system: the O(M) cell list in its vacuum box when it is large,
    else the brute-force list *without* periodic images (the unfolded system is not periodic;
    27 images would cost 27× for nothing)."""
    spec, graph = neighbors.allocate(big, potential.cutoff, capacity_multiplier)
    if spec.method == "brute":
        spec, graph = neighbors.allocate(big._replace(pbc=(False, False, False)), potential.cutoff,
                                         capacity_multiplier)
    return spec, graph


def _home_energies(potential, x, big: System, graph, n):
    r = edge_vectors(x, big.cell, graph)
    return potential(r, big.numbers, graph.senders, graph.receivers)[:n]


# ----------------------------------------------------------------------------- (b) unfolded route

def unfolded_flux(potential, system: System, unf: Unfolding, spec, velocities, masses) -> HeatFlux:
    """Exact potential flux of a semi-local potential (any number of message-passing steps).

    J_pot = Σ_i R_i (dU_i/dt) − Σ_j R_j (∂U/∂R_j · v_j) over the unfolded system: the first
    term is the jvp of B = Σ_i stop_grad(R_i) U_i along the unfolded velocities, the second
    uses the gradient of the force pass. Forces fold back by summing over replicas.
    """
    n = system.positions.shape[0]
    big = unfolded_system(system, unf)
    graph = neighbors.build(big, spec)
    vb = velocities[unf.idx]

    def e_of(x):
        return _home_energies(potential, x, big, graph, n)

    ei, dei = jax.jvp(e_of, (big.positions,), (vb,))  # dU_i/dt
    (grad,) = jax.vjp(e_of, big.positions)[1](jnp.ones_like(ei))  # ∂U/∂R_j (M, 3)
    r = jax.lax.stop_gradient(big.positions)
    term1 = jnp.sum(r[:n] * dei[:, None], axis=0)  # ∂B/∂R · v
    term2 = jnp.sum(r * jnp.sum(grad * vb, axis=-1)[:, None], axis=0)
    forces = -jax.ops.segment_sum(grad, unf.idx, n)
    overflow = graph.overflow | unfolding_overflow(system, unf)
    return HeatFlux(jnp.sum(ei), ei, forces, term1 - term2,
                    convective_flux(ei, velocities, masses), overflow)


# ----------------------------------------------------------------------------- (c) Hardy reference

def hardy_flux(potential, system: System, velocities, masses, skin: float = 1.0,
               chunk: int = 8) -> HeatFlux:
    """O(N²) Hardy reference: J_pot = Σ_i Σ_j' (R_i − R_j') (∂U_i/∂R_j' · v_j'), one reverse pass
    per atom i over all images j' within n_interactions·cutoff + skin. Not jitted as a whole; tests."""
    check_species(potential, system.numbers)
    unf = unfold(potential, system, skin=skin)
    big = unfolded_system(system, unf)
    spec, graph = allocate_unfolded(potential, big)
    n = system.positions.shape[0]
    vb = velocities[unf.idx]

    @eqx.filter_jit
    def run(potential, x, vb, graph):
        e_of = lambda y: _home_energies(potential, y, big, graph, n)  # noqa: E731
        ei, vjp = jax.vjp(e_of, x)

        def one(i):
            (g,) = vjp(jax.nn.one_hot(i, n, dtype=x.dtype))  # ∇_R U_i  (M, 3)
            gv = jnp.sum(g * vb, axis=-1)
            return jnp.sum((x[i][None, :] - x) * gv[:, None], axis=0), g

        js, gs = jax.lax.map(one, jnp.arange(n), batch_size=chunk)
        forces = -jax.ops.segment_sum(jnp.sum(gs, axis=0), unf.idx, n)
        return ei, forces, jnp.sum(js, axis=0)

    ei, forces, jpot = run(potential, big.positions, vb, graph)
    return HeatFlux(jnp.sum(ei), ei, forces, jpot, convective_flux(ei, velocities, masses),
                    graph.overflow)


# ----------------------------------------------------------------------------- factory

class FluxFns(NamedTuple):
    """(init, apply) of `heat_flux` (`curvax.protocol`)."""

    init: Callable  # init(system) -> state (host side)
    apply: Callable  # apply(system, velocities, state) -> HeatFlux (jit-able)


def heat_flux(potential, masses, route: str = "unfolded", skin: float = 0.5,
              capacity_multiplier: float = 1.25) -> FluxFns:
    """Factory: (init, apply) for the heat flux by `route` ("unfolded" | "edge").

        state = f.init(system)                       # allocate neighbour list / unfolding
        hf = f.apply(system, velocities, state)      # jit-able; check hf.overflow
    masses: (N,) amu. `route="edge"` is exact only for potentials with n_interactions == 1.
    """
    masses = jnp.asarray(masses)
    if route == "edge":
        def init(system):
            check_species(potential, system.numbers)
            return neighbors.allocate(system, potential.cutoff, capacity_multiplier)[0]

        @eqx.filter_jit
        def apply(system, velocities, spec):
            return edge_flux(potential, system, spec, velocities, masses.astype(velocities.dtype))
    elif route == "unfolded":
        def init(system):
            check_species(potential, system.numbers)
            unf = unfold(potential, system, skin)
            spec, _ = allocate_unfolded(potential, unfolded_system(system, unf), capacity_multiplier)
            return spec, unf

        @eqx.filter_jit
        def apply(system, velocities, state):
            spec, unf = state
            return unfolded_flux(potential, system, unf, spec, velocities,
                                 masses.astype(velocities.dtype))
    else:
        raise ValueError(f"unknown heat-flux route {route!r}; use 'unfolded' or 'edge'")
    return FluxFns(init, apply)
