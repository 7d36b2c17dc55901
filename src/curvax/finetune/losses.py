"""Losses for phonon fine-tuning (PFT): sampled Hessian columns + energy/force/stress.

Hessian term, per structure s with DFT force constants Φ (phonopy layout, eV/Å²):
    sample v  (a unit vector e_{kα} on a random real atom k and direction α, or a random
               Gaussian vector on the real atoms, normalised),
    H v       by ONE forward-over-reverse HVP  (jvp of the force pass; exact, no 3N×3N),
    L_H = (1/3N_s) Σ_{iβ} |(Hv)_{iβ} − (Φ v)_{iβ}|            (MAE, "mae")
      or  (1/3N_s) Σ_{iβ} ((Hv)_{iβ} − (Φ v)_{iβ})²           (MSE, "mse")
with (Φ v)_{iβ} = Σ_{jγ} Φ_{ij}^{βγ} v_{jγ}. The expectation over unit vectors of L_H (MSE)
is the per-atom-normalised squared Frobenius error of the whole Hessian, so the sampled
loss is an unbiased estimate of the dense-Hessian loss (`dense_hessian_loss`).

EFS term (per structure, NaN labels are skipped):
    L_EFS = w_E |E − E*|/N + w_F (1/3N) Σ|F − F*| + w_S (1/6) Σ|σ − σ*|         (MAE)

Ref.: the Nequix phonon fine-tuning recipe (Koker, Smidt et al., 2025): Hessian 100,
force 20, stress 5 on phonon data; E/F/S 500/200/50 on upstream data; k = 4 upstream steps
per phonon step.
"""
from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from curvax import derivatives
from curvax.batch import Batch


class EFSWeights(NamedTuple):
    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0


def _err(d, kind):
    return jnp.abs(d) if kind == "mae" else d * d


def sample_direction(key, node_mask, mode: str = "unit"):
    """A probe vector v (N, 3) on the real atoms: one-hot e_{kα} ("unit") or Gaussian ("random")."""
    n = node_mask.shape[0]
    if mode == "unit":
        k_atom, k_dir = jax.random.split(key)
        logits = jnp.where(node_mask, 0.0, -jnp.inf)
        atom = jax.random.categorical(k_atom, logits)
        direction = jax.random.randint(k_dir, (), 0, 3)
        return jnp.zeros((n, 3)).at[atom, direction].set(1.0)
    if mode == "random":
        v = jax.random.normal(key, (n, 3)) * node_mask[:, None]
        return v / jnp.sqrt(jnp.sum(v * v))
    raise ValueError(f"unknown Hessian sampling mode {mode!r} (unit | random)")


def structure_hvp(potential, s: Batch, v):
    """(F, H·v) of one (padded) structure [eV/Å]: one jvp of the gradient, whose primal output
    is −F, so the forces come for free with the HVP. v: (N, 3), or (P, N, 3) for P probes that
    share one primal pass (the jvp is vmapped over the probes; the force pass is not)."""
    e = derivatives.position_energy_fn(potential, s.system, s.graph)
    x = s.system.positions
    if v.ndim == 2:
        g, hv = jax.jvp(jax.grad(e), (x,), (v.astype(x.dtype),))
        return -g, hv
    g, lin = jax.linearize(jax.grad(e), x)
    return -g, jax.vmap(lin)(v.astype(x.dtype))


def _probe_error(s: Batch, hv, fc, v, kind: str):
    """Mean over probes (leading axes of v) of (1/3N) Σ_iβ err((Hv)_iβ − (Φv)_iβ)."""
    target = jnp.einsum("ijab,...jb->...ia", fc, v)
    m = s.node_mask[:, None]
    n_probes = max(1, v.size // (v.shape[-2] * 3))
    return jnp.sum(jnp.where(m, _err(hv - target, kind), 0.0)) / (3 * jnp.sum(s.node_mask) * n_probes)


def hessian_probe_loss(potential, s: Batch, fc, v, kind: str = "mae"):
    """L_H of one structure for a given probe vector v (N, 3); fc: (N, N, 3, 3) padded."""
    return _probe_error(s, structure_hvp(potential, s, v)[1], fc, v, kind)


def hessian_column_loss(potential, s: Batch, fc, key, mode: str = "unit", kind: str = "mae"):
    """Sampled Hessian loss L_H of one structure (see module docstring): one HVP."""
    v = sample_direction(key, s.node_mask, mode).astype(fc.dtype)
    return hessian_probe_loss(potential, s, fc, v, kind)


def dense_hessian_loss(potential, s: Batch, fc, kind: str = "mse"):
    """Explicit dense-Hessian loss (1/3N)·(1/3N) Σ_{iβ,jγ} err(H − Φ): the expectation of the
    unit-vector sampled loss. Materialises H (tests and memory benchmarks only)."""
    h = jax.hessian(derivatives.position_energy_fn(potential, s.system, s.graph))(s.system.positions)
    h = h.transpose(0, 2, 1, 3)  # (i, j, a, b)
    m = (s.node_mask[:, None] & s.node_mask[None, :])[:, :, None, None]
    n_real = jnp.sum(s.node_mask)
    return jnp.sum(jnp.where(m, _err(h - fc, kind), 0.0)) / (3 * n_real) ** 2


def _force_error(s: Batch, f, kind: str):
    mask = s.node_mask[:, None] & ~jnp.isnan(s.forces)
    return jnp.sum(jnp.where(mask, _err(f - jnp.nan_to_num(s.forces), kind), 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def efs_loss(potential, s: Batch, w: EFSWeights, kind: str = "mae"):
    """L_EFS of one (padded) structure and its per-term errors (MAE units: eV/atom, eV/Å, eV/Å³)."""
    _, ei, f, sigma = derivatives.energy_forces_stress(potential, s.system, s.graph)
    n = jnp.sum(s.node_mask)
    e = jnp.sum(jnp.where(s.node_mask, ei, 0.0))
    e_err = jnp.where(jnp.isnan(s.energy), 0.0, _err((e - jnp.nan_to_num(s.energy)) / n, kind))
    f_err = _force_error(s, f, kind)
    smask = ~jnp.isnan(s.stress)
    s_err = jnp.sum(jnp.where(smask, _err(derivatives.to_voigt(sigma) - jnp.nan_to_num(s.stress), kind), 0.0)) / jnp.maximum(jnp.sum(smask), 1)
    total = w.energy * e_err + w.forces * f_err + w.stress * s_err
    return total, {"energy": e_err, "forces": f_err, "stress": s_err}


def efs_terms(potential, batch: Batch, w: EFSWeights, kind: str = "mae"):
    """Per-structure (L_EFS, {"energy", "forces", "stress"} terms) over a batch (vmapped)."""
    return eqx.filter_vmap(lambda s: efs_loss(potential, s, w, kind))(batch)


def batch_efs_loss(potential, batch: Batch, w: EFSWeights, kind: str = "mae"):
    """Mean L_EFS over a batch (vmapped)."""
    tot, terms = efs_terms(potential, batch, w, kind)
    return jnp.mean(tot), {k: jnp.mean(v) for k, v in terms.items()}


def sample_directions(key, node_mask, mode: str = "unit", n_probes: int = 1):
    """`n_probes` independent probe vectors, shape (n_probes, N, 3) (see `sample_direction`)."""
    return jax.vmap(lambda k: sample_direction(k, node_mask, mode))(jax.random.split(key, n_probes))


def phonon_loss(potential, s: Batch, fc, key, w_hessian: float, w: EFSWeights,
                mode: str = "unit", kind: str = "mae", n_probes: int = 1):
    """w_H·L_H + L_EFS of one phonon structure. With w_E = w_S = 0 (the default: DFT phonon
    supercells carry forces only) the force term uses the forces of the HVP's own primal pass,
    so a phonon step costs one forward-over-reverse pass, not an extra force+stress pass.
    n_probes > 1: L_H is the mean over that many probes, all from one linearisation of the
    forces (one primal pass, `n_probes` tangent passes): less noise per step for less than
    `n_probes` times the cost."""
    v = (sample_direction(key, s.node_mask, mode) if n_probes == 1
         else sample_directions(key, s.node_mask, mode, n_probes)).astype(fc.dtype)
    f, hv = structure_hvp(potential, s, v)
    lh = _probe_error(s, hv, fc, v, kind)
    if w.energy or w.stress:
        le, terms = efs_loss(potential, s, w, kind)
    else:
        terms = {"forces": _force_error(s, f, kind)}
        le = w.forces * terms["forces"]
    return w_hessian * lh + le, {"hessian": lh, **terms}


def batch_phonon_loss(potential, batch: Batch, fc, key, w_hessian: float, w: EFSWeights,
                      mode: str = "unit", kind: str = "mae", n_probes: int = 1):
    """Mean over structures of `phonon_loss` (`n_probes` HVPs each)."""
    keys = jax.random.split(key, fc.shape[0])
    tot, terms = eqx.filter_vmap(
        lambda s, f, k: phonon_loss(potential, s, f, k, w_hessian, w, mode, kind, n_probes))(batch, fc, keys)
    return jnp.mean(tot), {k: jnp.mean(v) for k, v in terms.items()}
