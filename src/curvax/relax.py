"""Differentiable structure relaxation: steepest descent and FIRE as pure (init, step) pairs,
unrolled with `lax.scan`, batched over padded structures, with three ways to differentiate.

Generalized coordinates z = (y, e) of one structure (row vectors, Å):

    D = I + sym(e)/c,   x = y·D,   cell = cell₀·D          (c = cell_factor = number of atoms)

With the cell fixed (`cell=False`) e is frozen at 0 and x = y. The generalized forces are the
exact negative gradient of E(z), built from `curvax.derivatives.energy_forces_stress`
(forces F and stress σ at (x, cell); ASE sign, σ = (1/V) ∂E/∂ε):

    f_y = −∂E/∂y = F·D,         f_e = −∂E/∂e = −(1/c) sym(D⁻¹ V σ)     [eV/Å, eV]

so f_e is the generalized cell force −V·σ (ASE UnitCellFilter/FrechetCellFilter at small strain)
and the fixed point is F = 0, σ = 0. Convergence (as ASE with a cell filter): max over atoms
|F_i| and over rows |V σ|/c below `fmax` [eV/Å]; a converged structure is frozen (jnp.where).

Relaxers (mass 1, as ASE):
- steepest descent: z ← z + clip(η f, max_step)
- FIRE: Bitzek, Bulatov, Gumbsch et al., PRL 97, 170201 (2006), ASE's variant (Euler step,
  global norms, max_step); the branch P = f·v > 0 is taken with jnp.where, so every step is
  differentiable.

The neighbour graph is allocated once with `cutoff + skin` and held fixed. A pair not in the
list started farther than r_c + skin, so it is still beyond r_c after the unroll if
σ_min(D)(r_c + skin − 2 max_i|Δy_i|) > r_c; `graph_ok` reports that bound per structure.

Differentiation (`grad_mode`):
- "bptt":       plain backpropagation through the scan; memory ∝ steps.
- "checkpoint": the scan is cut into segments of `segment` steps (default ⌈√steps⌉), each under
                `jax.checkpoint`; memory ∝ steps/segment + segment, recompute one forward pass.
- "implicit":   the relaxation runs without gradients; at the minimum z*(θ) with ∇_z E = 0,
                dL/dθ = wᵀ ∂_θ f(z*, θ), with H w = ∂L/∂z* solved by conjugate gradients on
                Hessian-vector products (`curvax.hessian.hvp` at fixed cell), the translation
                null space (and the padded atoms, and antisymmetric e) projected out. Memory is
                independent of the number of steps. Exact only at a converged minimum.
Ref. (implicit): Blondel et al., Efficient and modular implicit differentiation, NeurIPS 2022.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax import batch as batching
from curvax import derivatives, hessian
from curvax.neighbors import Graph
from curvax.potentials.base import check_species
from curvax.system import System


# --------------------------------------------------------------------------- data structures
class Coords(NamedTuple):
    """Generalized coordinates (or forces, velocities) of one structure."""

    y: jnp.ndarray  # (N, 3) positions in the reference (undeformed) frame [Å]
    e: jnp.ndarray  # (3, 3) scaled strain c·ε [Å-free]; only sym(e) matters


class RelaxBatch(NamedTuple):
    """Structures padded to common sizes; every array has a leading batch axis B.

    positions (B,N,3) Å, cell (B,3,3) Å, numbers (B,N), atom_mask (B,N) bool,
    graph: `Graph` with (B,E) arrays, allocated at cutoff + skin and held fixed.
    """

    positions: jnp.ndarray
    cell: jnp.ndarray
    numbers: jnp.ndarray
    atom_mask: jnp.ndarray
    graph: Graph

    @property
    def n_atoms(self):
        return jnp.sum(self.atom_mask, axis=-1)


class RelaxResult(NamedTuple):
    positions: jnp.ndarray  # (B,N,3) relaxed Cartesian positions [Å]
    cell: jnp.ndarray  # (B,3,3) relaxed cell [Å]
    energy: jnp.ndarray  # (B,) [eV] (real atoms only)
    fmax: jnp.ndarray  # (B,) final max force (incl. cell) [eV/Å]
    n_steps: jnp.ndarray  # (B,) steps taken before convergence (= steps if not converged)
    converged: jnp.ndarray  # (B,) bool
    graph_ok: jnp.ndarray  # (B,) bool: fixed graph still contains every pair within r_c


class Evaluation(NamedTuple):
    energy: jnp.ndarray  # () eV
    force: Coords  # generalized forces
    fmax: jnp.ndarray  # () eV/Å
    forces: jnp.ndarray  # (N,3) Cartesian forces eV/Å
    stress: jnp.ndarray  # (3,3) eV/Å³


# --------------------------------------------------------------------------- generalized forces
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


# --------------------------------------------------------------------------- relaxers
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

    return init, step


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

    return init, step


RELAXERS = {"fire": fire, "sd": steepest_descent}


# --------------------------------------------------------------------------- unrolling
def unroll(step: Callable, state, steps: int, fmax: float, segment: int | None = None):
    """Run `steps` relaxer steps with `lax.scan`, freezing once state.fmax < fmax.

    segment: if given, scan over ⌊steps/segment⌋ segments, each `jax.checkpoint`-ed (gradient
    checkpointing), plus the remainder. Returns (final state, number of steps taken).
    """

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


# --------------------------------------------------------------------------- batches
def make_batch(systems, cutoff: float, skin: float = 1.0, n_atoms: int | None = None,
               n_edges: int | None = None) -> RelaxBatch:
    """Pad `systems` (list of periodic `System`) to common sizes, graphs at cutoff + skin.

    Uses `curvax.batch` (graph_of, pad_structure, stack). n_atoms / n_edges: pad to these sizes
    (fixed shapes: one compile for many batches); ValueError if a structure does not fit.
    """
    if not systems:
        raise ValueError("make_batch: no structures")
    graphs = []
    for k, s in enumerate(systems):
        if not all(s.pbc):
            raise ValueError(f"structure {k}: relaxation supports periodic structures only (pbc={s.pbc})")
        graphs.append(batching.graph_of(s, cutoff + skin, where=f"structure {k}"))
    nmax = max(s.n_atoms for s in systems) if n_atoms is None else n_atoms
    emax = max(max(int(np.sum(np.asarray(g.mask))) for g in graphs), 1) if n_edges is None else n_edges
    padded = []
    for k, (s, g) in enumerate(zip(systems, graphs)):
        try:
            padded.append(batching.pad_structure(s, g, nmax, emax))
        except ValueError as e:
            raise ValueError(f"make_batch: structure {k}: {e}") from None
    b = batching.stack(padded)
    return RelaxBatch(b.system.positions, b.system.cell, b.system.numbers, b.node_mask, b.graph)


def unbatch(result: RelaxResult, batch: RelaxBatch, pbc=(True, True, True)) -> list[System]:
    """Relaxed `System`s without padding."""
    out = []
    for b in range(result.positions.shape[0]):
        n = int(np.asarray(batch.atom_mask[b]).sum())
        out.append(System(result.positions[b, :n], result.cell[b], batch.numbers[b, :n], pbc))
    return out


# --------------------------------------------------------------------------- implicit gradients
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


def _implicit_root(static, batch: RelaxBatch, cell: bool, cf, cg_tol: float, cg_maxiter: int,
                   damping: float):
    """z ↦ z with the implicit-function VJP at a minimum (see module docstring)."""

    def forces(params, z):
        pot = eqx.combine(params, static)
        ev = jax.vmap(lambda zz, c0, nu, g, m, f: evaluate(pot, zz, c0, nu, g, m, cell, f))(
            z, batch.cell, batch.numbers, batch.graph, batch.atom_mask, cf)
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

        w = jax.vmap(solve)(z, zbar, batch.cell, batch.numbers, batch.graph, batch.atom_mask, cf)
        _, vjp = jax.vjp(lambda p: forces(p, z), params)
        (pbar,) = vjp(w)
        return pbar, jax.tree.map(jnp.zeros_like, z)

    root.defvjp(fwd, bwd)
    return root


# --------------------------------------------------------------------------- driver
def relax(potential, batch: RelaxBatch, *, cell: bool = False, method: str = "fire", steps: int = 100,
          fmax: float = 0.05, grad_mode: str = "bptt", segment: int | None = None,
          cutoff: float | None = None, skin: float = 1.0, cg_tol: float = 1e-10, cg_maxiter: int = 500,
          damping: float = 0.0, **relaxer_kwargs) -> RelaxResult:
    """Relax every structure of `batch` (jit-able; differentiable w.r.t. the potential).

    method: "fire" | "sd"; steps: unrolled steps; fmax [eV/Å]; grad_mode: "bptt" |
    "checkpoint" | "implicit" (see module docstring); cutoff, skin [Å]: the graph's cutoff is
    cutoff + skin (cutoff defaults to potential.cutoff), used only for `graph_ok`.
    relaxer_kwargs go to the relaxer factory (e.g. dt, max_step, step_size).
    """
    if method not in RELAXERS:
        raise ValueError(f"unknown relaxer {method!r}; choose one of {sorted(RELAXERS)}")
    if grad_mode not in ("bptt", "checkpoint", "implicit"):
        raise ValueError(f"unknown grad_mode {grad_mode!r}; choose bptt, checkpoint or implicit")
    rc = float(potential.cutoff if cutoff is None else cutoff)
    if grad_mode == "checkpoint" and segment is None:
        segment = max(1, int(math.ceil(math.sqrt(steps))))
    if grad_mode != "checkpoint":
        segment = None
    dtype = batch.positions.dtype
    cf = jnp.maximum(batch.n_atoms, 1).astype(dtype)
    params, static = eqx.partition(potential, eqx.is_inexact_array)
    run_params = jax.lax.stop_gradient(params) if grad_mode == "implicit" else params

    def one(y0, c0, nu, g, m, f):
        pot = eqx.combine(run_params, static)

        def force_fn(z):
            ev = evaluate(pot, z, c0, nu, g, m, cell, f)
            return ev.energy, ev.force, ev.fmax

        init, step = RELAXERS[method](force_fn, **relaxer_kwargs)
        z0 = Coords(y0, jnp.zeros((3, 3), dtype))
        s, n = unroll(step, init(z0), steps, fmax, segment)
        return s.z, s.fmax, n

    z, fm, n = jax.vmap(one)(batch.positions, batch.cell, batch.numbers, batch.graph, batch.atom_mask, cf)
    if grad_mode == "implicit":
        z = jax.lax.stop_gradient(z)
        z = _implicit_root(static, batch, cell, cf, cg_tol, cg_maxiter, damping)(params, z)

    def finish(zz, y0, c0, nu, g, m, f):
        x, c = structure(zz, c0, f)
        ev = evaluate(potential, zz, c0, nu, g, m, cell, f)
        dy = jnp.max(_safe_norm((zz.y - y0) * m[:, None], axis=-1))
        smin = jnp.min(jnp.abs(jnp.linalg.eigvalsh(deformation(zz.e, f))))
        ok = smin * (rc + skin - 2.0 * dy) > rc
        return x, c, ev.energy, ok

    x, c, e, ok = jax.vmap(finish)(z, batch.positions, batch.cell, batch.numbers, batch.graph,
                                   batch.atom_mask, cf)
    return RelaxResult(x, c, e, fm, n, fm < fmax, ok)


relax_jit = eqx.filter_jit(relax)


@eqx.filter_jit
def evaluate_batch(potential, batch: RelaxBatch) -> Evaluation:
    """`evaluate` (energy [eV], forces [eV/Å], stress [eV/Å³], generalized forces with the cell
    DOF) at the unrelaxed positions of every structure of `batch` (one compile per batch shape)."""
    cf = jnp.maximum(batch.n_atoms, 1).astype(batch.positions.dtype)

    def one(y, c, nu, g, m, f):
        return evaluate(potential, Coords(y, jnp.zeros((3, 3), y.dtype)), c, nu, g, m, True, f)

    return jax.vmap(one)(batch.positions, batch.cell, batch.numbers, batch.graph, batch.atom_mask, cf)


def relax_systems(potential, systems, *, cell: bool = False, steps: int = 500, fmax: float = 0.05,
                  method: str = "fire", skin: float = 1.0, chunk: int = 100, progress=None,
                  **kwargs) -> tuple[list[System], dict]:
    """Host-side convenience: relax a list of `System`s one by one (no gradients).

    Runs `chunk` steps at a time with the graph re-allocated at the start of each chunk (atoms
    padded to the largest structure and edges to a shared, growing capacity, so that structures
    of different sizes reuse one compiled relaxation); a chunk after which
    `graph_ok` fails is re-run at half the length. Stops at `fmax` or after `steps`.
    FIRE's velocities restart at each chunk (as after an ASE restart).
    Returns (relaxed systems, info with per-structure arrays "energy", "fmax", "n_steps",
    "converged").
    """
    out, info = [], {"energy": [], "fmax": [], "n_steps": [], "converged": []}
    n_pad = max(s.n_atoms for s in systems)
    cap = max(int(np.ceil(1.2 * int(np.sum(np.asarray(batching.graph_of(
        s, potential.cutoff + skin, where=f"structure {k}").mask))))) + 1 for k, s in enumerate(systems))
    for k, s in enumerate(systems):
        check_species(potential, s.numbers, where=f"structure {k}")
        done, cur, fm, e, n_chunk = 0, s, np.inf, np.nan, chunk
        while done < steps:
            n = min(n_chunk, steps - done)
            graph = batching.graph_of(cur, potential.cutoff + skin, where=f"structure {k}")
            cap = max(cap, int(np.ceil(1.2 * int(np.sum(np.asarray(graph.mask))))) + 1)
            batch = make_batch([cur], potential.cutoff, skin, n_atoms=n_pad, n_edges=cap)
            res = relax_jit(potential, batch, cell=cell, method=method, steps=n, fmax=fmax, skin=skin,
                            **kwargs)
            if not bool(res.graph_ok[0]) and n > 1:
                n_chunk = max(1, n // 2)
                continue
            cur = unbatch(res, batch, s.pbc)[0]
            done += int(res.n_steps[0])
            fm, e = float(res.fmax[0]), float(res.energy[0])
            if bool(res.converged[0]):
                break
        out.append(cur)
        info["energy"].append(e)
        info["fmax"].append(fm)
        info["n_steps"].append(done)
        info["converged"].append(fm < fmax)
        if progress is not None:
            progress(k, info)
    return out, {k: np.asarray(v) for k, v in info.items()}


def scaled_cell(atoms, s: float):
    """A copy of `atoms` with cell → s·cell and positions → s·positions (fractions kept)."""
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell) * s, scale_atoms=True)
    return out


def relax_volume(potential, cells: list, iterations: int = 12, ptol: float = 1e-4, chunk: int = 16):
    """Scale each cell isotropically to the potential's zero pressure (host-side, no gradients).

    Cell shape and fractional coordinates are kept: cell → s·cell, x → s·x, and s solves
    p(s) = −tr σ(s)/3 = 0 by secant iterations from s = 1 and 1.01 (|p| < `ptol` eV/Å³,
    ≈ 0.016 GPa; s clipped to [0.9, 1.1] per iteration). This is the leading-order move of a
    structure from one functional's equilibrium to another's (e.g. a PBEsol DFT geometry to a
    PBE-trained model's volume), with the force constants' Cartesian frame unchanged.
    `cells`: `ase.Atoms` (pressure is intensive: pass primitive cells). Only unconverged cells
    are evaluated, `chunk` at a time, grouped by padded shape (`bucket_shape` of atoms and
    1.15 × edges at s = 1), so there is one compilation per shape bucket.
    Returns (scaled copies of the cells, s per cell (length ratio), |p| per cell [eV/Å³])."""
    from curvax.efs_data import pad_all, pseudo_label
    from curvax.force_constants import bucket_shape
    from curvax.potentials.base import parameter_dtype
    from curvax.system import from_atoms

    dtype = parameter_dtype(potential)
    cells = list(cells)

    def structure(k, s):
        sys_ = from_atoms(scaled_cell(cells[k], s), dtype=dtype)
        return sys_, batching.graph_of(sys_, potential.cutoff, where=f"cell {k}"), {}

    def n_edges(item):
        return int(np.sum(np.asarray(item[1].mask)))

    bucket = [bucket_shape(len(a), int(1.15 * n_edges(structure(k, 1.0)))) for k, a in enumerate(cells)]
    sizes = {b: bucket.count(b) for b in bucket}
    width = {b: min(chunk, 1 << (n - 1).bit_length()) for b, n in sizes.items()}  # fixed: one program per bucket

    def pressures(idx, scales):
        """p [eV/Å³] of cells `idx` at length scales `scales`."""
        out = np.empty(len(idx))
        for shape in sorted({bucket[k] for k in idx}):
            rows = [j for j, k in enumerate(idx) if bucket[k] == shape]
            w = width[shape]
            for c in range(0, len(rows), w):
                part = rows[c:c + w]
                items = [structure(idx[j], scales[j]) for j in part]
                need = max(n_edges(it) for it in items)
                pad = shape if need <= shape[1] else bucket_shape(shape[0], int(1.15 * need))  # compressed past the margin
                batch = batching.stack(pad_all(items + items[:1] * (w - len(items)), *pad))
                stress = np.asarray(pseudo_label(potential, batch).stress)[:len(part)]
                out[part] = -stress[:, :3].mean(axis=1)
        return out

    everyone = np.arange(len(cells))
    s0, s1 = np.ones(len(cells)), np.full(len(cells), 1.01)
    p0, p1 = pressures(everyone, s0), pressures(everyone, s1)
    for _ in range(iterations):
        active = np.flatnonzero(np.abs(p1) >= ptol)
        if not active.size:
            break
        slope = (p1[active] - p0[active]) / (s1[active] - s0[active])
        ok = np.isfinite(slope) & (slope < 0)  # p falls as the cell expands; else a 1 % nudge
        step = np.where(ok, -p1[active] / np.where(ok, slope, -1.0), 0.01 * np.sign(p1[active]))
        s2 = np.clip(s1[active] + step, 0.9 * s1[active], 1.1 * s1[active])
        p2 = pressures(active, s2)
        s0[active], p0[active] = s1[active], p1[active]
        s1[active], p1[active] = s2, p2
    return [scaled_cell(a, s) for a, s in zip(cells, s1)], s1, np.abs(p1)
