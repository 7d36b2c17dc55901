"""How gradients flow through a relaxation: adjoint objects for `curvax.relax.relax`.

    relax(potential, batch, adjoint=Unrolled())           # plain BPTT through the scan
    relax(potential, batch, adjoint=Checkpointed(10))     # BPTT, segments of 10 steps recomputed
    relax(potential, batch, adjoint=Implicit(cg_tol=1e-10))   # implicit function theorem

- `Unrolled()`: backpropagation through `lax.scan`; memory ∝ steps.
- `Checkpointed(segment)`: the scan is cut into segments of `segment` steps (default ⌈√steps⌉),
  each under `jax.checkpoint`; memory ∝ steps/segment + segment, one extra forward pass.
- `Implicit(cg_tol, cg_maxiter, damping)`: the relaxation runs without gradients; at the
  minimum z*(θ) with ∇_z E = 0, dL/dθ = wᵀ ∂_θ f(z*, θ), with H w = ∂L/∂z* solved by
  conjugate gradients on Hessian-vector products (`curvax.hessian.hvp` at fixed cell, a jvp of
  the generalized forces with the cell), the translation null space, the padded atoms and the
  antisymmetric part of e projected out. Memory is independent of the number of steps; exact
  only at a converged minimum.
  Ref.: Blondel et al., Efficient and modular implicit differentiation, NeurIPS 2022.

An adjoint says three things to the driver: the checkpoint segment of the unrolled scan
(`segment(steps)`), whether the forward relaxation sees differentiable parameters
(`forward_params`), and what is attached to the end point (`attach`). A hybrid (unroll the
first K steps, implicit at the end) fits the same three hooks.
`from_name("bptt" | "checkpoint" | "implicit", ...)` maps the config files' `grad_mode`.
"""
from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from curvax import hessian
from curvax.batch import Batch
from curvax.relax.coordinates import Coords, _axpy, _sym, evaluate, structure
from curvax.system import System


@dataclasses.dataclass(frozen=True)
class AbstractAdjoint:
    """The three hooks the driver calls (module doc); the defaults are plain BPTT."""

    def segment(self, steps: int) -> int | None:
        """Steps per `jax.checkpoint` segment of the unrolled scan (None: no checkpointing)."""
        return None

    def forward_params(self, params):
        """The parameters the forward relaxation sees."""
        return params

    def attach(self, z, params, static, batch: Batch, cell: bool, cf):
        """The end point z of the relaxation, with the gradient path this adjoint gives it."""
        return z


@dataclasses.dataclass(frozen=True)
class Unrolled(AbstractAdjoint):
    """Backpropagation through every unrolled step (BPTT)."""


@dataclasses.dataclass(frozen=True)
class Checkpointed(AbstractAdjoint):
    """BPTT with the scan under `jax.checkpoint` in segments of `segment_length` steps
    (None: ⌈√steps⌉)."""

    segment_length: int | None = None

    def segment(self, steps: int) -> int:
        return self.segment_length or max(1, int(math.ceil(math.sqrt(steps))))


@dataclasses.dataclass(frozen=True)
class Implicit(AbstractAdjoint):
    """Implicit gradient at the end point (CG on Hessian-vector products; see module doc).
    damping: λ in (H + λ) w = ∂L/∂z*, for nearly singular Hessians."""

    cg_tol: float = 1e-10
    cg_maxiter: int = 500
    damping: float = 0.0

    def forward_params(self, params):
        return jax.lax.stop_gradient(params)

    def attach(self, z, params, static, batch: Batch, cell: bool, cf):
        z = jax.lax.stop_gradient(z)
        root = _implicit_root(static, batch, cell, cf, self.cg_tol, self.cg_maxiter, self.damping)
        return root(params, z)


GRAD_MODES = ("bptt", "checkpoint", "implicit")


def from_name(grad_mode: str, segment: int | None = None, **implicit_kwargs) -> AbstractAdjoint:
    """The adjoint of a config's `grad_mode` ("bptt" | "checkpoint" | "implicit")."""
    if grad_mode == "bptt":
        return Unrolled()
    if grad_mode == "checkpoint":
        return Checkpointed(segment)
    if grad_mode == "implicit":
        return Implicit(**implicit_kwargs)
    raise ValueError(f"unknown grad_mode {grad_mode!r}; choose one of {', '.join(GRAD_MODES)}")


def _project(v: Coords, mask, cell: bool) -> Coords:
    """Remove the null space: uniform translation of real atoms, padded atoms, antisymmetric e."""
    m = mask.astype(v.y.dtype)[:, None]
    mean = jnp.sum(v.y * m, axis=0) / jnp.maximum(jnp.sum(m), 1.0)
    y = (v.y - mean) * m
    e = _sym(v.e) if cell else jnp.zeros_like(v.e)
    return Coords(y, e)


def _gen_hvp(potential, z, cell0, numbers, graph, mask, cell, cf, v: Coords) -> Coords:
    """H·v for the Hessian of E(z): `curvax.hessian.hvp` at fixed cell, jvp of f(z) with the cell."""
    if not cell:
        x, c = structure(z, cell0, cf)
        return Coords(hessian.hvp(potential, System(x, c, numbers), graph, v.y), jnp.zeros_like(v.e))
    f = lambda zz: evaluate(potential, zz, cell0, numbers, graph, mask, cell, cf).force  # noqa: E731
    return jax.tree.map(jnp.negative, jax.jvp(f, (z,), (v,))[1])


def _implicit_root(static, batch: Batch, cell: bool, cf, cg_tol: float, cg_maxiter: int,
                   damping: float):
    """z ↦ z with the implicit-function VJP at a minimum (see module docstring)."""

    def forces(params, z):
        pot = eqx.combine(params, static)
        ev = jax.vmap(lambda zz, c0, nu, g, m, f: evaluate(pot, zz, c0, nu, g, m, cell, f))(
            z, batch.system.cell, batch.system.numbers, batch.graph, batch.node_mask, cf)
        return ev.force

    @jax.custom_vjp
    def root(params, z):
        return z

    def fwd(params, z):
        return z, (params, z)

    def bwd(res, zbar):
        params, z = res
        pot = eqx.combine(params, static)

        def solve(zz, zb, c0, nu, g, m, f):
            proj = lambda v: _project(v, m, cell)  # noqa: E731

            def matvec(v):
                v = proj(v)
                hv = _gen_hvp(pot, zz, c0, nu, g, m, cell, f, v)
                return _axpy(damping, v, proj(hv))

            w, _ = jax.scipy.sparse.linalg.cg(matvec, proj(zb), tol=cg_tol, maxiter=cg_maxiter)
            return proj(w)

        w = jax.vmap(solve)(z, zbar, batch.system.cell, batch.system.numbers, batch.graph, batch.node_mask, cf)
        _, vjp = jax.vjp(lambda p: forces(p, z), params)
        (pbar,) = vjp(w)
        return pbar, jax.tree.map(jnp.zeros_like, z)

    root.defvjp(fwd, bwd)
    return root
