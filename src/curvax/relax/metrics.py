"""Losses comparing relaxed structures with reference (DFT) structures, per structure.

Displacement (periodic minimum image in fractional coordinates, rigid translation removed):

    Δs_i = s_i − s_i^ref − round(s_i − s_i^ref)           (fractional, s = x·cell⁻¹)
    Δ_i  = Δs_i · cell_ref,   Δ̄ = Σ m_i Δ_i / Σ m_i
    L_x  = Σ_i m_i |Δ_i − Δ̄|² / Σ_i m_i                    [Å²]  (mass-weighted MSD)

    D_q  = √L_x                                             [Å]   (mass-weighted RMS displacement)

D_q is the loss of relaxation fine-tuning by unrolled steepest descent (Dramko et al., "On the
finetuning of MLIPs through the lens of iterated maps with BPTT", arXiv:2512.01067, 2025);
as a loss term it is √(L_x + ε²), ε = 1e-6 Å, so that its gradient is finite at D_q = 0.

Lattice (rotation invariant):  L_a = (1/3) Σ_k (|a_k|/|a_k^ref| − 1)²,  L_V = (V/V_ref − 1)²
Energy (optional):             L_E = ((E − E_ref)/N)²                  [eV²/atom²]

    L = w_x L_x + w_q D_q + w_a L_a + w_V L_V + w_E L_E

Masses m_i are atomic masses (amu, ASE table); padded atoms (mask False) are ignored.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_masses

_MASSES = np.asarray(atomic_masses, dtype=np.float64)  # numpy: a JAX array here would start the backend at import


class LossWeights(NamedTuple):
    displacement: float = 1.0  # w_x, on L_x [Å²]
    dq: float = 0.0  # w_q, on D_q [Å]
    lattice: float = 1.0
    volume: float = 1.0
    energy: float = 0.0


def masses(numbers, dtype=None):
    """Atomic masses [amu] of `numbers`."""
    m = jnp.asarray(_MASSES)[numbers]
    return m.astype(dtype) if dtype is not None else m


def displacement_msd(positions, cell, ref_positions, ref_cell, numbers, mask):
    """Mass-weighted mean squared displacement L_x [Å²] of one structure (formula above)."""
    dtype = positions.dtype
    ds = positions @ jnp.linalg.inv(cell) - ref_positions @ jnp.linalg.inv(ref_cell)
    ds = ds - jax.lax.stop_gradient(jnp.round(ds))
    d = ds @ ref_cell
    w = masses(numbers, dtype) * mask.astype(dtype)
    wsum = jnp.maximum(jnp.sum(w), 1e-30)
    d = d - jnp.sum(w[:, None] * d, axis=0) / wsum
    return jnp.sum(w * jnp.sum(d * d, axis=-1)) / wsum


def rms_displacement(positions, cell, ref_positions, ref_cell, numbers, mask):
    """D_q = √L_x [Å]: the mass-weighted RMS displacement (metric for reports)."""
    return jnp.sqrt(displacement_msd(positions, cell, ref_positions, ref_cell, numbers, mask))


_DQ_EPS2 = 1e-12  # Å²: the ε² of the D_q loss term


def dq_loss(positions, cell, ref_positions, ref_cell, numbers, mask):
    """D_q as a loss term, √(L_x + ε²) [Å] (differentiable at D_q = 0)."""
    return jnp.sqrt(displacement_msd(positions, cell, ref_positions, ref_cell, numbers, mask) + _DQ_EPS2)


def lattice_error(cell, ref_cell):
    """L_a: mean squared relative error of the lattice-vector lengths."""
    a = jnp.linalg.norm(cell, axis=-1)
    a0 = jnp.linalg.norm(ref_cell, axis=-1)
    return jnp.mean((a / a0 - 1.0) ** 2)


def volume_error(cell, ref_cell):
    """V/V_ref − 1 (signed relative volume error)."""
    return jnp.abs(jnp.linalg.det(cell)) / jnp.abs(jnp.linalg.det(ref_cell)) - 1.0


def structure_loss(positions, cell, ref_positions, ref_cell, numbers, mask, energy=None,
                   ref_energy=None, weights: LossWeights = LossWeights()):
    """L of one structure (formula in the module docstring)."""
    loss = weights.displacement * displacement_msd(positions, cell, ref_positions, ref_cell, numbers, mask)
    if weights.dq:
        loss = loss + weights.dq * dq_loss(positions, cell, ref_positions, ref_cell, numbers, mask)
    loss = loss + weights.lattice * lattice_error(cell, ref_cell)
    loss = loss + weights.volume * volume_error(cell, ref_cell) ** 2
    if weights.energy and energy is not None and ref_energy is not None:
        n = jnp.maximum(jnp.sum(mask), 1).astype(positions.dtype)
        loss = loss + weights.energy * ((energy - ref_energy) / n) ** 2
    return loss


def batch_loss(result, ref_positions, ref_cell, numbers, mask, ref_energy=None,
               weights: LossWeights = LossWeights(), structure_weights=None):
    """Mean of `structure_loss` over a batch (`result`: `curvax.relax.RelaxResult`)."""
    e = result.energy if ref_energy is not None else None
    if ref_energy is None:
        losses = jax.vmap(lambda x, c, xr, cr, nu, m: structure_loss(x, c, xr, cr, nu, m, weights=weights))(
            result.positions, result.cell, ref_positions, ref_cell, numbers, mask)
    else:
        losses = jax.vmap(lambda x, c, xr, cr, nu, m, en, er: structure_loss(
            x, c, xr, cr, nu, m, en, er, weights=weights))(
            result.positions, result.cell, ref_positions, ref_cell, numbers, mask, e, ref_energy)
    if structure_weights is None:
        return jnp.mean(losses)
    return jnp.sum(losses * structure_weights) / jnp.maximum(jnp.sum(structure_weights), 1e-30)


def relaxation_summary(rms_displacement, volume_error, steps, converged) -> dict:
    """The relaxation metrics reported everywhere (relax-tune evaluation, PFT forgetting check),
    as means over structures: "rms_displacement" [Å] (mass-weighted, `rms_displacement`),
    "abs_volume_error" (|V/V_ref − 1|), "steps" (relaxer steps taken), "converged" (fraction)."""
    return {"rms_displacement": float(np.mean(rms_displacement)),
            "abs_volume_error": float(np.mean(np.abs(volume_error))),
            "steps": float(np.mean(steps)), "converged": float(np.mean(converged))}
