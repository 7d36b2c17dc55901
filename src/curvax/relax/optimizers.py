"""Relaxers as pure (init, step) pairs over generalized coordinates (`curvax.relax.coordinates`),
and `unroll`, which runs one (`lax.scan`, or a `lax.while_loop` that exits at convergence when
nothing is differentiated through it) and freezes a structure once it has converged.

`force_fn(z) -> (energy [eV], generalized force Coords, fmax [eV/Å])`; mass 1, as ASE.
- steepest descent: z ← z + clip(η f, max_step)
- FIRE: Bitzek, Bulatov, Gumbsch et al., PRL 97, 170201 (2006), ASE's variant (Euler step,
  global norms, max_step); the branch P = f·v > 0 is taken with jnp.where, so every step is
  differentiable.
Both follow the (init, apply) protocol of `curvax.protocol`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from curvax.protocol import InitApply
from curvax.relax.coordinates import Coords, _axpy, _safe_norm, _tree_vdot


class SDState(NamedTuple):
    z: Coords
    force: Coords
    energy: jnp.ndarray
    fmax: jnp.ndarray


def steepest_descent(force_fn: Callable, step_size=0.01, max_step=0.2):
    """Fixed-step steepest descent z ← z + η f(z), the step norm clipped to `max_step` [Å].

    force_fn(z) -> (energy, generalized force Coords, fmax). η in Å²/eV.
    Returns the pure pair (init(z) -> state, step(state) -> state).
    """

    def init(z):
        e, f, fm = force_fn(z)
        return SDState(z, f, e, fm)

    def step(s):
        dz = jax.tree.map(lambda f: step_size * f, s.force)
        n = jnp.sqrt(_tree_vdot(dz, dz) + 1e-300)
        scale = jnp.minimum(1.0, max_step / n)
        z = _axpy(scale, dz, s.z)
        return init(z)

    return InitApply(init, step)


class FireState(NamedTuple):
    z: Coords
    v: Coords
    force: Coords
    energy: jnp.ndarray
    fmax: jnp.ndarray
    dt: jnp.ndarray
    alpha: jnp.ndarray
    n_pos: jnp.ndarray


def fire(force_fn: Callable, dt=0.1, dt_max=1.0, n_min=5, f_inc=1.1, f_dec=0.5,
         alpha_start=0.1, f_alpha=0.99, max_step=0.2):
    """FIRE (Bitzek et al., PRL 97, 170201 (2006)) in ASE's form, branch-free.

        P = f·v;  P > 0: v ← (1−α)v + α|v| f/|f|, after n_min such steps dt ← min(f_inc dt, dt_max),
                          α ← f_alpha α;   P ≤ 0: v ← 0, dt ← f_dec dt, α ← α_start
        v ← v + dt f;  dz = dt v (norm clipped to max_step [Å]);  z ← z + dz
    dt in ASE time units (mass 1). The first step has v = 0 (as ASE). Returns (init, step).
    """

    def init(z):
        e, f, fm = force_fn(z)
        zero = jax.tree.map(jnp.zeros_like, z)
        dtype = z.y.dtype
        return FireState(z, zero, f, e, fm, jnp.asarray(dt, dtype), jnp.asarray(alpha_start, dtype),
                         jnp.asarray(-1, jnp.int32))  # n_pos = -1: no velocity yet (ASE's v is None)

    def step(s):
        p = _tree_vdot(s.force, s.v)
        fn = _safe_norm(jnp.concatenate([l.ravel() for l in jax.tree.leaves(s.force)]))
        vn = _safe_norm(jnp.concatenate([l.ravel() for l in jax.tree.leaves(s.v)]))
        mix = jax.tree.map(lambda v, f: (1 - s.alpha) * v + s.alpha * vn * f / jnp.where(fn > 0, fn, 1.0),
                           s.v, s.force)
        fresh = s.n_pos < 0
        up = (p > 0) & ~fresh
        v = jax.tree.map(lambda a: jnp.where(up, a, 0.0), mix)
        grow = up & (s.n_pos > n_min)
        new_dt = jnp.where(up, jnp.where(grow, jnp.minimum(s.dt * f_inc, dt_max), s.dt), s.dt * f_dec)
        new_dt = jnp.where(fresh, s.dt, new_dt)
        alpha = jnp.where(up, jnp.where(grow, s.alpha * f_alpha, s.alpha), alpha_start)
        alpha = jnp.where(fresh, s.alpha, alpha)
        n_pos = jnp.where(up, s.n_pos + 1, 0)
        v = _axpy(new_dt, s.force, v)
        dz = jax.tree.map(lambda a: new_dt * a, v)
        n = _safe_norm(jnp.concatenate([l.ravel() for l in jax.tree.leaves(dz)]))
        scale = jnp.where(n > max_step, max_step / jnp.where(n > 0, n, 1.0), 1.0)
        z = _axpy(scale, dz, s.z)
        e, f, fm = force_fn(z)
        return FireState(z, v, f, e, fm, new_dt.astype(s.dt.dtype), alpha.astype(s.alpha.dtype),
                         n_pos.astype(jnp.int32))

    return InitApply(init, step)


RELAXERS = {"fire": fire, "sd": steepest_descent}


def unroll(step: Callable, state, steps: int, fmax: float, segment: int | None = None,
           early_exit: bool = False, valid: Callable | None = None):
    """Run up to `steps` relaxer steps, freezing once state.fmax < fmax.

    `lax.scan` over all `steps` (reverse-differentiable); segment: if given, scan over
    ⌊steps/segment⌋ segments, each `jax.checkpoint`-ed (gradient checkpointing), plus the
    remainder. early_exit: a `lax.while_loop` that stops at convergence instead (the same
    result; under `vmap` once every structure has converged; not reverse-differentiable — for
    relaxations nothing is backpropagated through); `valid(state)`, if given, also stops it at
    the first state for which it is False. Returns (final state, number of steps taken).
    """
    if early_exit:
        ok = (lambda s: True) if valid is None else valid  # noqa: E731
        return jax.lax.while_loop(lambda c: (c[1] < steps) & ~(c[0].fmax < fmax) & ok(c[0]),
                                  lambda c: (step(c[0]), c[1] + 1), (state, jnp.asarray(0, jnp.int32)))

    def body(carry, _):
        s, n = carry
        done = s.fmax < fmax
        new = step(s)
        s = jax.tree.map(lambda a, b: jnp.where(done, a, b), s, new)
        return (s, n + (~done).astype(jnp.int32)), None

    carry = (state, jnp.asarray(0, jnp.int32))
    if segment is None or segment >= steps:
        return jax.lax.scan(body, carry, None, length=steps)[0]
    n_seg, rest = divmod(steps, segment)

    @jax.checkpoint
    def seg(c):
        return jax.lax.scan(body, c, None, length=segment)[0]

    carry = jax.lax.scan(lambda c, _: (seg(c), None), carry, None, length=n_seg)[0]
    if rest:
        carry = jax.lax.scan(body, carry, None, length=rest)[0]
    return carry
