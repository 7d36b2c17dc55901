"""How gradients flow through a relaxation: adjoint objects for `curvax.relax.relax`.

    relax(potential, batch, adjoint=Unrolled())           # plain BPTT through the scan
    relax(potential, batch, adjoint=Checkpointed(10))     # BPTT, segments of 10 steps recomputed
    relax(potential, batch, adjoint=Implicit(cg_tol=1e-10))   # implicit function theorem
    relax(potential, batch, adjoint=NoGradient())         # evaluation: stops at convergence

- `Unrolled()`: backpropagation through `lax.scan`; memory ∝ steps.
- `Checkpointed(segment)`: the scan is cut into segments of `segment` steps (default ⌈√steps⌉),
  each under `jax.checkpoint`; memory ∝ steps/segment + segment, one extra forward pass.
- `Implicit(cg_tol, cg_maxiter, damping)`: the relaxation runs without gradients; at the
  minimum z*(θ) with ∇_z E = 0, dL/dθ = wᵀ ∂_θ f(z*, θ), with H w = ∂L/∂z* solved by
  conjugate gradients on Hessian-vector products (`curvax.hessian.hvp` at fixed cell, a jvp of
  the generalized forces with the cell), the translation null space, the padded atoms and the
  antisymmetric part of e projected out (cg_tol is raised to 30 ε of the dtype, which float32
  CG cannot beat). Memory is independent of the number of steps; exact only at a converged
  minimum — elsewhere the Hessian may be indefinite and the solve meaningless (a non-finite
  result is then skipped by the training step, `finetune.training.make_update`).
  Ref.: Blondel et al., Efficient and modular implicit differentiation, NeurIPS 2022.
- `NoGradient()`: nothing is differentiated through the relaxation (evaluation, screening);
  its loop exits as soon as every structure has converged instead of running all `steps`
  (a relaxation that converges in 20 of 500 steps costs 20 force calls, not 500).
- `Hybrid(unrolled_steps=K, step_size=η)`: the first K steps are unrolled with gradients (the
  "basin selection" phase; checkpointed with `segment_length`), the remaining m = T − K run
  without, and the end point z_T gets the gradient of a linear model of the tail about it:
      z_T ≈ z*(θ) + A^m (z_K − z*(θ)),   A = I − η H(z_T)        (steepest descent, X ← X + η F)
  so  ∂L/∂z_K = (A^m)ᵀ ḡ  (m HVPs)  and  θ̄ = implicit gradient of z* with ḡ − (A^m)ᵀ ḡ (CG).
  Where the tail has converged A^m ḡ → 0 and the hybrid is the implicit gradient (= BPTT's
  limit); where soft modes still remember z_K the head receives their share, as BPTT's would.
  Memory: the K head steps plus O(1). η is the steepest-descent step of the relaxation (for
  FIRE a stated approximation). Ref.: Zhang, Dramko, Kyrillidis, "Which valley, and how deep"
  (Rice AI-OWLS, 2026): unrolled basin selection + implicit equilibrium phase.

An adjoint says five things to the driver: how many leading steps are differentiated
(`head_steps(steps)`, None: all), the checkpoint segment of the unrolled scan
(`segment(steps)`), whether the forward relaxation sees differentiable parameters
(`forward_params`), whether its loop may exit at convergence (`early_exit`: nothing is
backpropagated through it; the undifferentiated tail of `Hybrid` always does), and what is
attached to the end point (`attach`).
`from_name("bptt" | "checkpoint" | "implicit" | "hybrid", ...)` maps the config files' `grad_mode`.
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
    """The four hooks the driver calls (module doc); the defaults are plain BPTT."""

    def head_steps(self, steps: int) -> int | None:
        """Leading steps run with gradients, the rest without (None: all steps, as `forward_params` says)."""
        return None

    def segment(self, steps: int) -> int | None:
        """Steps per `jax.checkpoint` segment of the unrolled scan (None: no checkpointing)."""
        return None

    def forward_params(self, params):
        """The parameters the forward relaxation sees."""
        return params

    @property
    def early_exit(self) -> bool:
        """The (whole) forward loop is not backpropagated through: it may stop at convergence."""
        return False

    def attach(self, z, params, static, batch: Batch, cell: bool, cf, z_head=None, tail_steps: int = 0):
        """The end point z of the relaxation, with the gradient path this adjoint gives it
        (z_head: the state after the `head_steps` differentiated steps, `tail_steps` before z)."""
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
class NoGradient(AbstractAdjoint):
    """No gradient through the relaxation (evaluation): the parameters are stopped and the loop
    exits when every structure has converged."""

    def forward_params(self, params):
        return jax.lax.stop_gradient(params)

    @property
    def early_exit(self) -> bool:
        return True

    def attach(self, z, params, static, batch: Batch, cell: bool, cf, z_head=None, tail_steps: int = 0):
        return jax.lax.stop_gradient(z)


@dataclasses.dataclass(frozen=True)
class Implicit(NoGradient):
    """Implicit gradient at the end point (CG on Hessian-vector products; see module doc); the
    relaxation itself runs as `NoGradient`'s. damping: λ in (H + λ) w = ∂L/∂z*, for nearly
    singular Hessians."""

    cg_tol: float = 1e-10
    cg_maxiter: int = 500
    damping: float = 0.0

    def attach(self, z, params, static, batch: Batch, cell: bool, cf, z_head=None, tail_steps: int = 0):
        z = jax.lax.stop_gradient(z)
        root = _implicit_root(static, batch, cell, cf, self.cg_tol, self.cg_maxiter, self.damping)
        return root(params, z, z, 0.0)


@dataclasses.dataclass(frozen=True)
class Hybrid(AbstractAdjoint):
    """Unrolled head of `unrolled_steps` steps + implicit end point with a linear tail model
    (module doc). step_size: η [Å²/eV] of the tail model; segment_length: checkpoint the head."""

    unrolled_steps: int = 10
    step_size: float = 0.01
    segment_length: int | None = None
    cg_tol: float = 1e-10
    cg_maxiter: int = 500
    damping: float = 0.0

    def head_steps(self, steps: int) -> int:
        return min(self.unrolled_steps, steps)

    def segment(self, steps: int) -> int | None:
        return self.segment_length

    def attach(self, z, params, static, batch: Batch, cell: bool, cf, z_head=None, tail_steps: int = 0):
        z = jax.lax.stop_gradient(z)
        root = _implicit_root(static, batch, cell, cf, self.cg_tol, self.cg_maxiter, self.damping, tail_steps)
        return root(params, z if z_head is None else z_head, z, self.step_size)


GRAD_MODES = ("bptt", "checkpoint", "implicit", "hybrid")


def from_name(grad_mode: str, segment: int | None = None, unrolled_steps: int = 10, step_size: float = 0.01,
              **implicit_kwargs) -> AbstractAdjoint:
    """The adjoint of a config's `grad_mode` ("bptt" | "checkpoint" | "implicit" | "hybrid")."""
    if grad_mode == "bptt":
        return Unrolled()
    if grad_mode == "checkpoint":
        return Checkpointed(segment)
    if grad_mode == "implicit":
        return Implicit(**implicit_kwargs)
    if grad_mode == "hybrid":
        return Hybrid(unrolled_steps, step_size, segment, **implicit_kwargs)
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
                   damping: float, tail_steps: int = 0):
    """(params, z_head, z, η) ↦ z with the implicit-function VJP at the minimum z; with
    `tail_steps` m > 0 the linear tail model of `Hybrid` (module docstring) sends (A^m)ᵀ z̄,
    A = I − η H(z), to z_head and the rest to the implicit solve."""

    def forces(params, z):
        pot = eqx.combine(params, static)
        ev = jax.vmap(lambda zz, c0, nu, g, m, f: evaluate(pot, zz, c0, nu, g, m, cell, f))(
            z, batch.system.cell, batch.system.numbers, batch.graph, batch.node_mask, cf)
        return ev.force

    @jax.custom_vjp
    def root(params, z_head, z, step_size):
        return z

    def fwd(params, z_head, z, step_size):
        return z, (params, z_head, z, step_size)

    def bwd(res, zbar):
        params, z_head, z, step_size = res
        pot = eqx.combine(params, static)

        def solve(zz, zb, c0, nu, g, m, f):
            proj = lambda v: _project(v, m, cell)  # noqa: E731
            hvp = lambda v: proj(_gen_hvp(pot, zz, c0, nu, g, m, cell, f, proj(v)))  # noqa: E731
            head = jax.lax.fori_loop(0, tail_steps, lambda _, v: _axpy(-step_size, hvp(v), v), proj(zb))
            rhs = _axpy(-1.0, head, proj(zb)) if tail_steps else proj(zb)
            # a tolerance below the dtype's round-off is never met: CG would run all cg_maxiter
            # iterations on noise (float32: drifting, and 0/0 = NaN once a residual vanishes)
            tol = max(cg_tol, 30 * float(jnp.finfo(zz.y.dtype).eps))
            w, _ = jax.scipy.sparse.linalg.cg(lambda v: _axpy(damping, proj(v), hvp(v)), rhs, tol=tol,
                                              maxiter=cg_maxiter)
            return proj(w), head

        w, head = jax.vmap(solve)(z, zbar, batch.system.cell, batch.system.numbers, batch.graph,
                                  batch.node_mask, cf)
        _, vjp = jax.vjp(lambda p: forces(p, z), params)
        (pbar,) = vjp(w)
        if not tail_steps:
            head = jax.tree.map(jnp.zeros_like, z_head)
        return pbar, head, jax.tree.map(jnp.zeros_like, z), jnp.zeros_like(step_size)

    root.defvjp(fwd, bwd)
    return root
