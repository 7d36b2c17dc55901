"""Generalized coordinates of a relaxation with the cell: z = (y, e), one structure (row vectors, Å):

    D = I + sym(e)/c,   x = y·D,   cell = cell₀·D          (c = cell_factor = number of atoms)

With the cell fixed (`cell=False`) e is frozen at 0 and x = y. The generalized forces are the
exact negative gradient of E(z), built from `curvax.derivatives.energy_forces_stress`
(forces F and stress σ at (x, cell); ASE sign, σ = (1/V) ∂E/∂ε):

    f_y = −∂E/∂y = F·D,         f_e = −∂E/∂e = −(1/c) sym(D⁻¹ V σ)     [eV/Å, eV]

so f_e is the generalized cell force −V·σ (ASE UnitCellFilter/FrechetCellFilter at small strain)
and the fixed point is F = 0, σ = 0. Convergence (as ASE with a cell filter): max over atoms
|F_i| and over rows |V σ|/c below `fmax` [eV/Å].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvax import derivatives
from curvax.neighbors import Graph
from curvax.system import System


class Coords(NamedTuple):
    """Generalized coordinates (or forces, velocities) of one structure."""

    y: jnp.ndarray  # (N, 3) positions in the reference (undeformed) frame [Å]
    e: jnp.ndarray  # (3, 3) scaled strain c·ε [Å-free]; only sym(e) matters


class Evaluation(NamedTuple):
    energy: jnp.ndarray  # () eV
    force: Coords  # generalized forces
    fmax: jnp.ndarray  # () eV/Å
    forces: jnp.ndarray  # (N,3) Cartesian forces eV/Å
    stress: jnp.ndarray  # (3,3) eV/Å³


def _sym(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def deformation(e, cell_factor):
    """D = I + sym(e)/c."""
    return jnp.eye(3, dtype=e.dtype) + _sym(e) / cell_factor


def structure(z: Coords, cell0, cell_factor):
    """Cartesian positions x = y·D and cell = cell₀·D."""
    d = deformation(z.e, cell_factor)
    return z.y @ d, cell0 @ d


def _safe_norm(x, axis=None):
    s = jnp.sum(x * x, axis=axis)
    return jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)


def evaluate(potential, z: Coords, cell0, numbers, graph: Graph, atom_mask, cell: bool,
             cell_factor) -> Evaluation:
    """Energy and generalized forces at z (formulas in the module docstring)."""
    x, c = structure(z, cell0, cell_factor)
    d = deformation(z.e, cell_factor)
    _, ei, f, sigma = derivatives.energy_forces_stress(potential, System(x, c, numbers), graph)
    m = atom_mask.astype(x.dtype)
    f = f * m[:, None]
    e_tot = jnp.sum(ei * m)
    fy = f @ d
    fmax = jnp.max(_safe_norm(f, axis=-1))
    if cell:
        vs = jnp.abs(jnp.linalg.det(c)) * sigma
        fe = -_sym(jnp.linalg.solve(d, vs)) / cell_factor
        fmax = jnp.maximum(fmax, jnp.max(_safe_norm(vs / cell_factor, axis=-1)))
    else:
        fe = jnp.zeros_like(z.e)
    return Evaluation(e_tot, Coords(fy, fe), fmax, f, sigma)


def _tree_vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(a, x, y):
    return jax.tree.map(lambda u, v: a * u + v, x, y)


def scaled_cell(atoms, s: float):
    """A copy of `atoms` with cell → s·cell and positions → s·positions (fractions kept)."""
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell) * s, scale_atoms=True)
    return out
