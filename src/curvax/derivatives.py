"""Energy, forces, stress and per-atom virials by automatic differentiation.

Everything derives from the per-atom energies E_i(r_ij) of a `Potential` evaluated on the
bond vectors r_ij = x_j − x_i + S·cell of a neighbour `Graph`:

    E        = Σ_i E_i                                       [eV]
    F_i      = −∂E/∂x_i                                      [eV/Å]
    σ        = (1/V) ∂E/∂ε |_{ε=0},  x → x(1+ε), cell → cell(1+ε)   [eV/Å³]   ("strain" route)
             = (1/V) Σ_edges r_ij ⊗ ∂E/∂r_ij                                    ("edges" route)
    W_i      = Σ_{edges with centre i} r_ij ⊗ ∂E/∂r_ij,  Σ_i W_i = V σ          [eV]
               (on a half list, pair potentials: ½ Σ_{edges with i at either end} r ⊗ ∂E/∂r)

Sign and Voigt order follow ASE: positive stress means the cell wants to shrink; Voigt
(xx, yy, zz, yz, xz, xy). For pair potentials W_i/V equals ASE's per-atom `stresses`.
Ref.: Knuth, Carbogno, Atalla, Blum, Scheffler, Comput. Phys. Commun. 190, 33 (2015);
Langer, Frank, Knoop, J. Chem. Phys. 159, 174105 (2023) (glp: stress/virials for MLIPs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from curvax.neighbors import Graph, edge_vectors
from curvax.system import System

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def to_voigt(t):
    """(..., 3, 3) -> (..., 6) in ASE order (xx, yy, zz, yz, xz, xy)."""
    return jnp.stack([t[..., a, b] for a, b in VOIGT], axis=-1)


def atom_energies(potential, positions, cell, numbers, graph: Graph):
    """Per-atom energies E_i [eV] at the given positions and cell."""
    r = edge_vectors(positions, cell, graph)
    return potential(r, numbers, graph.senders, graph.receivers)


def energy(potential, system: System, graph: Graph):
    """Total energy E [eV]."""
    return jnp.sum(atom_energies(potential, system.positions, system.cell, system.numbers, graph))


def position_energy_fn(potential, system: System, graph: Graph):
    """E as a function of positions (N, 3) only, the graph frozen: the object Hessians act on."""
    return lambda x: jnp.sum(atom_energies(potential, x, system.cell, system.numbers, graph))


def _strain(eps):
    return jnp.eye(3, dtype=eps.dtype) + 0.5 * (eps + eps.T)


def energy_forces_stress(potential, system: System, graph: Graph):
    """(E, E_i, F, σ 3×3) by the strain route: one reverse pass over (positions, ε)."""

    def e_of(x, eps):
        f = _strain(eps)
        ei = atom_energies(potential, x @ f, system.cell @ f, system.numbers, graph)
        return jnp.sum(ei), ei

    eps0 = jnp.zeros((3, 3), system.positions.dtype)
    (e, ei), (dx, de) = jax.value_and_grad(e_of, argnums=(0, 1), has_aux=True)(system.positions, eps0)
    return e, ei, -dx, de / system.volume


def edge_gradients(potential, system: System, graph: Graph):
    """(E_i, r_ij, ∂E/∂r_ij): per-atom energies, bond vectors and the bond-vector gradient."""
    r = edge_vectors(system.positions, system.cell, graph)

    def e_of(r):
        ei = potential(r, system.numbers, graph.senders, graph.receivers)
        return jnp.sum(ei), ei

    g, ei = jax.grad(e_of, has_aux=True)(r)
    g = jnp.where(graph.mask[:, None], g, 0.0)
    return ei, r, g


def forces_from_edges(g, graph: Graph, n_atoms: int):
    """F_i = −∂E/∂x_i = Σ_{e: centre i} g_e − Σ_{e: neighbour i} g_e, with g = ∂E/∂r."""
    return (jax.ops.segment_sum(g, graph.receivers, n_atoms)
            - jax.ops.segment_sum(g, graph.senders, n_atoms))


def virials_from_edges(r, g, graph: Graph, n_atoms: int, half: bool = False):
    """Per-atom virials W_i = Σ_{e: centre i} r_e ⊗ g_e [eV], shape (N, 3, 3). half: a half
    list (each pair once): the pair's r ⊗ g is split equally between its two atoms, which is what
    the full list gives a pair potential (g_e = ½ φ' r̂ on each of the two directed edges)."""
    rg = r[:, :, None] * g[:, None, :]
    w = jax.ops.segment_sum(rg, graph.receivers, n_atoms)
    if half:
        w = 0.5 * (w + jax.ops.segment_sum(rg, graph.senders, n_atoms))
    return w


def properties(potential, system: System, graph: Graph, stress: bool = True,
               virials: bool = False, stress_route: str = "strain") -> dict:
    """Energy, per-atom energies, forces and (optionally) stress and per-atom virials.

    Returns a dict with "energy" (eV), "energies" (N,), "forces" (N,3) eV/Å,
    "stress" (6,) eV/Å³ (Voigt, ASE sign), "virials" (N,3,3) eV, "stresses" (N,6) eV/Å³.
    """
    n = system.positions.shape[0]
    out = {}
    if virials or stress_route == "edges":
        ei, r, g = edge_gradients(potential, system, graph)
        out["energies"] = ei
        out["energy"] = jnp.sum(ei)
        out["forces"] = forces_from_edges(g, graph, n)
        w = virials_from_edges(r, g, graph, n, half=getattr(potential, "half_list", False))
        if virials:
            out["virials"] = w
            out["stresses"] = to_voigt(w) / system.volume
        if stress:
            out["stress"] = to_voigt(jnp.sum(w, axis=0)) / system.volume
        return out
    if stress:
        e, ei, f, s = energy_forces_stress(potential, system, graph)
        out.update(energy=e, energies=ei, forces=f, stress=to_voigt(s))
    else:
        def e_of(x):
            ei = atom_energies(potential, x, system.cell, system.numbers, graph)
            return jnp.sum(ei), ei

        (e, ei), dx = jax.value_and_grad(e_of, has_aux=True)(system.positions)
        out.update(energy=e, energies=ei, forces=-dx)
    return out
