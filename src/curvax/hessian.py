"""Hessian-vector products and dense Hessians of the potential energy w.r.t. positions.

    H_{iα,jβ} = ∂²E / ∂x_iα ∂x_jβ                 [eV/Å²]
    (H v)     = d/dt ∇E(x + t v)|_{t=0}            forward-over-reverse (jvp of grad)
              = ∇_x (∇E(x) · v)                    reverse-over-reverse (grad of a vjp)

The graph (neighbour list and image shifts) is held fixed: the Hessian of a crystal at
fixed cell, as phonopy's force constants. Forward-over-reverse costs about one extra
forward pass over a force call and keeps memory at the level of the force call.
Dense Hessians are built column by column, `chunk` columns at a time, from one
linearisation (`jax.linearize`): memory grows with `chunk`, never with 3N.
Ref.: B. Pearlmutter, Neural Comput. 6, 147 (1994).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from curvax.derivatives import position_energy_fn
from curvax.neighbors import Graph
from curvax.system import System


def hvp(potential, system: System, graph: Graph, v, mode: str = "forward-over-reverse"):
    """H·v for a displacement field v of shape (N, 3). Returns (N, 3) [eV/Å²·Å = eV/Å]."""
    e = position_energy_fn(potential, system, graph)
    x = system.positions
    if mode == "forward-over-reverse":
        return jax.jvp(jax.grad(e), (x,), (v,))[1]
    if mode == "reverse-over-reverse":
        return jax.grad(lambda y: jnp.vdot(jax.grad(e)(y), v))(x)
    raise ValueError(f"unknown HVP mode {mode!r}")


def hessian_columns(potential, system: System, graph: Graph, vs, chunk: int = 16):
    """H·v for a batch vs of shape (K, N, 3), `chunk` at a time from one linearisation."""
    e = position_energy_fn(potential, system, graph)
    _, lin = jax.linearize(jax.grad(e), system.positions)
    return jax.lax.map(lin, vs, batch_size=min(chunk, vs.shape[0]))


@eqx.filter_jit
def hvp_batch(potential, batch, vs):
    """H·v of each structure of a padded `curvax.batch.Batch` with its own probe: vs (B, N, 3),
    structure b's HVP with vs[b] (forward-over-reverse, vmapped over structures). HVPs of
    different structures of one padded shape share one compiled program (phonon screening)."""
    pbc = batch.system.pbc

    def one(system, graph, v):
        return hvp(potential, system._replace(pbc=pbc), graph, v)

    return jax.vmap(one)(batch.system._replace(pbc=None), batch.graph, vs)


@eqx.filter_jit
def hessian(potential, system: System, graph: Graph, chunk: int = 16):
    """Dense Hessian, shape (N, N, 3, 3) (phonopy's force-constant layout) [eV/Å²]."""
    n = system.positions.shape[0]
    basis = jnp.eye(3 * n, dtype=system.positions.dtype).reshape(3 * n, n, 3)
    cols = hessian_columns(potential, system, graph, basis, chunk)  # (3N: jβ, N: i, 3: α)
    return cols.reshape(n, 3, n, 3).transpose(2, 0, 3, 1)  # (i, j, α, β)


@eqx.filter_jit
def hessian_reference(potential, system: System, graph: Graph):
    """Dense Hessian by `jax.hessian` (reverse-over-forward, all 3N at once): tests only."""
    n = system.positions.shape[0]
    h = jax.hessian(position_energy_fn(potential, system, graph))(system.positions)
    return h.transpose(0, 2, 1, 3).reshape(n, n, 3, 3)
