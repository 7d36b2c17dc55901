"""The batched relaxation driver: `relax` (jit-able, differentiable), host-side `relax_systems`
and `relax_volume`, and batches of padded structures (`make_batch`, `unbatch`).

`relax` unrolls a relaxer of `curvax.relax.optimizers` over the generalized coordinates of
`curvax.relax.coordinates` (positions, and the cell with `cell=True`) for every structure of a
padded `curvax.batch.Batch`, freezing converged ones; gradients flow as the adjoint object says
(`curvax.relax.adjoints`: `Unrolled()`, `Checkpointed(segment)`, `Implicit(...)`, `Hybrid(...)`,
`NoGradient()`).

The neighbour graph is allocated once with `cutoff + skin` and held fixed. A pair not in the
list started farther than r_c + skin, so it is still beyond r_c after the unroll if
σ_min(D)(r_c + skin − 2 max_i|Δy_i|) > r_c; `graph_ok` reports that bound per structure.
"""
from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax import batch as batching
from curvax.batch import Batch
from curvax.potentials.base import check_species, parameter_dtype
from curvax.relax.adjoints import AbstractAdjoint, NoGradient, Unrolled
from curvax.relax.coordinates import Coords, Evaluation, _safe_norm, deformation, evaluate, scaled_cell, structure
from curvax.relax.optimizers import RELAXERS, unroll
from curvax.system import System, from_atoms, to_atoms


class RelaxResult(NamedTuple):
    positions: jnp.ndarray  # (B,N,3) relaxed Cartesian positions [Å]
    cell: jnp.ndarray  # (B,3,3) relaxed cell [Å]
    energy: jnp.ndarray  # (B,) [eV] (real atoms only)
    fmax: jnp.ndarray  # (B,) final max force (incl. cell) [eV/Å]
    n_steps: jnp.ndarray  # (B,) steps taken before convergence (= steps if not converged)
    converged: jnp.ndarray  # (B,) bool
    graph_ok: jnp.ndarray  # (B,) bool: fixed graph still contains every pair within r_c



def make_batch(systems, cutoff: float, skin: float = 1.0, n_atoms: int | None = None,
               n_edges: int | None = None) -> Batch:
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
    return batching.stack(padded)


def unbatch(result: RelaxResult, batch: Batch, pbc=(True, True, True)) -> list[System]:
    """Relaxed `System`s without padding."""
    out = []
    for b in range(result.positions.shape[0]):
        n = int(np.asarray(batch.node_mask[b]).sum())
        out.append(System(result.positions[b, :n], result.cell[b], batch.system.numbers[b, :n], pbc))
    return out


def relax(potential, batch: Batch, *, cell: bool = False, method: str = "fire", steps: int = 100,
          fmax: float = 0.05, adjoint: AbstractAdjoint = Unrolled(), cutoff: float | None = None,
          skin: float = 1.0, stop_at_skin: bool = False, **relaxer_kwargs) -> RelaxResult:
    """Relax every structure of `batch` (jit-able; differentiable w.r.t. the potential).

    batch: `make_batch` output (graphs allocated at cutoff + skin, held fixed).
    method: "fire" | "sd"; steps: unrolled steps; fmax [eV/Å]; adjoint: how gradients flow
    (`Unrolled()`, `Checkpointed(segment)`, `Implicit(...)`, `Hybrid(K, η)`, `NoGradient()`:
    `curvax.relax.adjoints`);
    cutoff, skin [Å]: the graph's cutoff is cutoff + skin (cutoff defaults to
    potential.cutoff), used only for `graph_ok`. stop_at_skin (with an adjoint whose loop exits
    early, `NoGradient()`): a structure stops at the first step past the graph's bound — its
    positions come from forces on a valid graph; re-allocate and continue (`relax_systems`).
    relaxer_kwargs go to the relaxer factory (e.g. dt, max_step, step_size).
    """
    if method not in RELAXERS:
        raise ValueError(f"unknown relaxer {method!r}; choose one of {sorted(RELAXERS)}")
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be Unrolled(), Checkpointed(...), Implicit(...), Hybrid(...) or NoGradient(), "
                        f"got {adjoint!r}")
    rc = float(potential.cutoff if cutoff is None else cutoff)
    segment = adjoint.segment(steps)
    dtype = batch.system.positions.dtype
    cf = jnp.maximum(batch.n_atoms, 1).astype(dtype)
    params, static = eqx.partition(potential, eqx.is_inexact_array)
    run_params = adjoint.forward_params(params)
    # a traced relaxer setting (e.g. a learned step size) follows the potential's parameters
    on_arrays = lambda fn, kw: {k: fn(v) if eqx.is_inexact_array(v) else v for k, v in kw.items()}  # noqa: E731
    relaxer_kwargs = on_arrays(adjoint.forward_params, relaxer_kwargs)
    head = adjoint.head_steps(steps)
    if stop_at_skin and not (adjoint.early_exit and head is None):
        raise ValueError("stop_at_skin needs an adjoint whose relaxation loop may stop early (NoGradient())")

    def graph_holds(zz, y0, m, f):
        """The fixed graph still holds every pair within rc (module doc's bound)."""
        dy = jnp.max(_safe_norm((zz.y - y0) * m[:, None], axis=-1))
        smin = jnp.min(jnp.abs(jnp.linalg.eigvalsh(deformation(zz.e, f))))
        return smin * (rc + skin - 2.0 * dy) > rc

    def one(y0, c0, nu, g, m, f):
        def relaxer(p, kwargs):
            pot = eqx.combine(p, static)

            def force_fn(z):
                ev = evaluate(pot, z, c0, nu, g, m, cell, f)
                return ev.energy, ev.force, ev.fmax

            return RELAXERS[method](force_fn, **kwargs)

        init, step = relaxer(run_params, relaxer_kwargs)
        z0 = Coords(y0, jnp.zeros((3, 3), dtype))
        if head is None:
            valid = (lambda st: graph_holds(st.z, y0, m, f)) if stop_at_skin else None  # noqa: E731
            s, n = unroll(step, init(z0), steps, fmax, segment, adjoint.early_exit, valid)
            return s.z, s.z, s.fmax, n
        s, n = unroll(step, init(z0), head, fmax, segment)  # differentiated head ...
        tail_step = relaxer(jax.lax.stop_gradient(params),  # ... then the tail without gradients
                            on_arrays(jax.lax.stop_gradient, relaxer_kwargs))[1]
        t, n_tail = unroll(tail_step, jax.lax.stop_gradient(s), steps - head, fmax, early_exit=True)
        return s.z, t.z, t.fmax, n + n_tail

    columns = (batch.system.cell, batch.system.numbers, batch.graph, batch.node_mask, cf)
    z_head, z, fm, n = jax.vmap(one)(batch.system.positions, *columns)
    z = adjoint.attach(z, params, static, batch, cell, cf, z_head=z_head,
                       tail_steps=0 if head is None else steps - head)

    def finish(zz, y0, c0, nu, g, m, f):
        x, c = structure(zz, c0, f)
        ev = evaluate(potential, zz, c0, nu, g, m, cell, f)
        return x, c, ev.energy, graph_holds(zz, y0, m, f)

    x, c, e, ok = jax.vmap(finish)(z, batch.system.positions, *columns)
    return RelaxResult(x, c, e, fm, n, fm < fmax, ok)


relax_jit = eqx.filter_jit(relax)


@eqx.filter_jit
def evaluate_batch(potential, batch: Batch) -> Evaluation:
    """`evaluate` (energy [eV], forces [eV/Å], stress [eV/Å³], generalized forces with the cell
    DOF) at the unrelaxed positions of every structure of `batch` (one compile per batch shape)."""
    cf = jnp.maximum(batch.n_atoms, 1).astype(batch.system.positions.dtype)

    def one(y, c, nu, g, m, f):
        return evaluate(potential, Coords(y, jnp.zeros((3, 3), y.dtype)), c, nu, g, m, True, f)

    return jax.vmap(one)(batch.system.positions, batch.system.cell, batch.system.numbers, batch.graph,
                         batch.node_mask, cf)


def relax_systems(potential, systems, *, cell: bool = False, steps: int = 500, fmax: float = 0.05,
                  method: str = "fire", skin: float = 1.0, chunk: int = 100, progress=None,
                  **kwargs) -> tuple[list[System], dict]:
    """Host-side convenience: relax a list of `System`s one by one (no gradients).

    Runs up to `chunk` steps at a time with the graph re-allocated at the start of each chunk
    (atoms padded to the largest structure and edges to a shared, growing capacity, so that
    structures of different sizes reuse one compiled relaxation); a chunk ends early at the
    first step that takes an atom past the graph's skin (`relax(stop_at_skin=True)`: those
    positions came from forces on a valid graph), so no step is wasted and no pair within the
    cutoff is ever missed. Stops at `fmax` or after `steps`. FIRE's velocities restart at each
    chunk (as after an ASE restart). A structure whose
    energy or forces turn NaN/inf stops there, is not converged, and its "error" says so; the
    others go on. `progress(n)`, if given, is called with the number of steps of the budget
    (len(systems) × steps) used since its last call.
    Returns (relaxed systems, info with per-structure arrays "energy", "fmax", "n_steps",
    "converged", "error" ("" when none)).
    """
    if int(chunk) < 1 or int(steps) < 1:
        raise ValueError(f"relax_systems: steps and chunk must be ≥ 1 (got {steps}, {chunk})")
    if not skin >= 0:
        raise ValueError(f"relax_systems: skin must be ≥ 0 Å (got {skin})")
    out, info = [], {"energy": [], "fmax": [], "n_steps": [], "converged": [], "error": []}
    n_pad = max(s.n_atoms for s in systems)
    cap = max(int(np.ceil(1.2 * int(np.sum(np.asarray(batching.graph_of(
        s, potential.cutoff + skin, where=f"structure {k}").mask))))) + 1 for k, s in enumerate(systems))
    for k, s in enumerate(systems):
        check_species(potential, s.numbers, where=f"structure {k}")
        done, cur, fm, e, error = 0, s, np.inf, np.nan, ""
        while done < steps:
            n = min(chunk, steps - done)
            graph = batching.graph_of(cur, potential.cutoff + skin, where=f"structure {k}")
            cap = max(cap, int(np.ceil(1.2 * int(np.sum(np.asarray(graph.mask))))) + 1)
            batch = make_batch([cur], potential.cutoff, skin, n_atoms=n_pad, n_edges=cap)
            # the step budget as an array: chunks cut short at the skin leave budgets of every
            # length, and a static one would compile the relaxation again for each
            res = relax_jit(potential, batch, cell=cell, method=method, steps=jnp.asarray(n, jnp.int32), fmax=fmax,
                            skin=skin, adjoint=NoGradient(), stop_at_skin=True, **kwargs)
            done += int(res.n_steps[0])
            fm, e = float(res.fmax[0]), float(res.energy[0])
            if progress is not None:
                progress(int(res.n_steps[0]))
            if not (np.isfinite(fm) and np.isfinite(e)):
                error = f"energy or forces became NaN/inf within {done} steps"
                break
            cur = unbatch(res, batch, s.pbc)[0]
            if bool(res.converged[0]) and bool(res.graph_ok[0]):  # forces from a valid graph
                break
        if progress is not None:
            progress(steps - done)
        out.append(cur)
        info["energy"].append(e)
        info["fmax"].append(fm)
        info["n_steps"].append(done)
        info["converged"].append(not error and fm < fmax)
        info["error"].append(error)
    return out, {k: np.asarray(v) for k, v in info.items()}


def relax_unit_cells(potential, cells: list, fmax: float = 5e-3, steps: int = 500) -> list:
    """Relax unit cells (positions + cell, JAX FIRE, `relax.relax_systems`: one at a time, one
    compilation per size group (smaller / larger half) shared by every model of one
    architecture). Returns a list of `ase.Atoms`, or of ValueError for a relaxation that did
    not converge or went non-finite."""
    if not cells:
        return []
    systems = [from_atoms(a, dtype=parameter_dtype(potential)) for a in cells]
    relaxed, info = [None] * len(cells), {k: [None] * len(cells) for k in ("fmax", "converged", "error")}
    order = np.argsort([len(a) for a in cells], kind="stable")
    for group in np.array_split(order, min(2, len(cells))):  # small cells are not padded to the largest
        r, i = relax_systems(potential, [systems[k] for k in group], cell=True, steps=steps, fmax=fmax)
        for j, k in enumerate(group):
            relaxed[k] = r[j]
            for key in info:
                info[key][k] = i[key][j]
    out = []
    for s, fm, ok, error in zip(relaxed, info["fmax"], info["converged"], info["error"]):
        if error:  # non-finite energy or forces (`relax_systems` stopped that structure)
            out.append(ValueError(f"relaxation failed: {error}"))
        elif not ok:
            out.append(ValueError(f"relaxation not converged in {steps} FIRE steps (max |F| = {fm:.2e} eV/Å)"))
        else:
            out.append(to_atoms(s))
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
    dtype = parameter_dtype(potential)
    cells = list(cells)

    def scaled_item(k, s):
        sys_ = from_atoms(scaled_cell(cells[k], s), dtype=dtype)
        return sys_, batching.graph_of(sys_, potential.cutoff, where=f"cell {k}"), {}

    def n_edges(item):
        return int(np.sum(np.asarray(item[1].mask)))

    bucket = [batching.bucket_shape(len(a), int(1.15 * n_edges(scaled_item(k, 1.0)))) for k, a in enumerate(cells)]
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
                items = [scaled_item(idx[j], scales[j]) for j in part]
                need = max(n_edges(it) for it in items)
                pad = shape if need <= shape[1] else batching.bucket_shape(shape[0], int(1.15 * need))  # compressed past the margin
                batch = batching.stack(batching.pad_all(items + items[:1] * (w - len(items)), *pad))
                stress = np.asarray(evaluate_batch(potential, batch).stress)[:len(part)]
                out[part] = -np.trace(stress, axis1=1, axis2=2) / 3
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
