"""Core benchmark: (1) overhead of curvax's derivative engine over the raw Nequix call,
(2) O(N) scaling of the cell-list neighbour build.

    .venv/bin/python benchmarks/bench_core.py                      # defaults (CPU: a few minutes)
    .venv/bin/python benchmarks/bench_core.py --max-atoms 100000   # full 1k -> 100k sweep

(1) forces of a Nequix model on one fixed graph, timed several ways (float32, jit, median of
    `--repeat` calls after compilation, interleaved):
      raw      F = -∂/∂x Σ_i model.node_energies(r_ij(x), species, senders, receivers)
      curvax   derivatives.properties(..., stress=False)  (energy, per-atom energies, forces)
      curvax+σ derivatives.properties(..., stress=True)   (strain route: forces and stress)
      HVP      curvax.hessian.hvp, one column
      authors  nequix.calculator.NequixCalculator.get_forces (ASE, JAX backend, graph rebuilt
               per call, as a user runs it), where the nequix package is installed
    and the ratios to raw (target ~1 for curvax).
(2) neighbours.build (cell list, jit, graph already allocated) for fcc Ar supercells from
    `--min-atoms` to `--max-atoms`; prints the times and the exponent b of t ∝ N^b (target ~1).
(3) the list build for cells 1–4.6 cutoffs wide: brute, minimum image, cell list.
(4) MD with neighbour-list reuse: Lennard-Jones argon (float32, rc 8.5 Å, 50 K NVE, dt 5 fs),
    time per step of `thermal.md` with the list rebuilt every step vs reused within a skin
    (`neighbor_skin`, default 1 Å), against E + F alone on a fixed list at the cutoff, all on
    half lists (target: MD with skin ≤ 1.3 × E + F; both return energy and forces).
(5) jax-md side by side (optional: only where `jax_md` imports; not a curvax dependency —
    e.g. `pip install --target /tmp/jaxmd jax-md==0.2.29` and PYTHONPATH=/tmp/jaxmd): LJ argon
    fcc, rc 8.5 Å, float64, list rebuilt every call: (a) list build, (b) list + E + F, (c) E + F
    on a fixed list, curvax / jax-md per N (`--jaxmd-atoms`; target (b) ≤ 1.2), curvax on the
    half list its calculator uses for pair potentials and on the full list.
(6) compile time of the E + F + σ program (LJ, float32, rc 8.5 Å, fixed graph) against the
    number of edges, up to ~1 M (`--compile-atoms`, `--only-compile`): constant if no O(E) array is folded into
    the program at compile time (`neighbors.edge_vectors`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from curvax import derivatives, from_atoms, load_potential
from curvax.calculator import list_potential
from curvax.neighbors import allocate, build, edge_vectors

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "nequix-mp-1.nqx"


def timeit(fn, *args, repeat=5):
    """Median wall time [s] of fn(*args) after one warm-up (compile) call, and that first call's time."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), t_first


def timeit_interleaved(calls, repeat=5):
    """{name: (median time, first-call time)} for {name: (fn, args)}, alternating the calls in each
    round so that load from other processes affects all of them alike."""
    first, times = {}, {k: [] for k in calls}
    for k, (fn, args) in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[k] = time.perf_counter() - t0
    for _ in range(repeat):
        for k, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(times[k])), first[k]) for k in calls}


def supercell(n_atoms, symbol="Ar", crystal="fcc", a=5.26, cubic=True):
    """A rattled cubic supercell with about n_atoms atoms."""
    unit = bulk(symbol, crystal, a=a, cubic=cubic)
    k = max(1, int(round((n_atoms / len(unit)) ** (1 / 3))))
    atoms = unit.repeat((k, k, k))
    atoms.rattle(0.05, seed=0)
    return atoms


def bench_nequix(model_path, n_atoms, repeat):
    pot = load_potential(str(model_path))
    atoms = supercell(n_atoms, "Si", "diamond", a=5.43)
    system = from_atoms(atoms, dtype=jnp.float32)
    _, graph = allocate(system, pot.cutoff)
    species = pot.species(system.numbers)

    @eqx.filter_jit
    def raw_forces(model, positions, graph):
        def e(x):
            r = edge_vectors(x, system.cell, graph)
            return jnp.sum(model.node_energies(r, species, graph.senders, graph.receivers))
        return -jax.grad(e)(positions)

    @eqx.filter_jit
    def curvax_forces(pot, system, graph):
        return derivatives.properties(pot, system, graph, stress=False)["forces"]

    @eqx.filter_jit
    def curvax_forces_stress(pot, system, graph):
        res = derivatives.properties(pot, system, graph, stress=True)
        return res["forces"], res["stress"]

    @eqx.filter_jit
    def curvax_forces_stress_edges(pot, system, graph):
        res = derivatives.properties(pot, system, graph, stress=True, stress_route="edges")
        return res["forces"], res["stress"]

    from curvax.hessian import hvp

    @eqx.filter_jit
    def curvax_hvp(pot, system, graph, v):
        return hvp(pot, system, graph, v)

    v = jnp.zeros_like(system.positions).at[0, 0].set(1.0)

    def authors_calculator():
        """The model authors' ASE calculator (nequix.calculator.NequixCalculator, JAX backend)."""
        from nequix.calculator import NequixCalculator

        calc = NequixCalculator(model_path=str(model_path), backend="jax", use_kernel=False)
        a = atoms.copy()
        a.calc = calc

        def forces(k):
            a.positions[0, 0] += 1e-6 * (-1) ** k  # a new geometry each call (no ASE result cache)
            return a.get_forces()
        return forces

    try:
        nequix_forces = authors_calculator()
    except ImportError:
        nequix_forces = None
    calls = {"raw node_energies grad": (raw_forces, (pot.model, system.positions, graph)),
             "curvax forces": (curvax_forces, (pot, system, graph)),
             "curvax forces+stress (strain)": (curvax_forces_stress, (pot, system, graph)),
             "curvax forces+stress (edges)": (curvax_forces_stress_edges, (pot, system, graph)),
             "curvax HVP (fwd-over-rev)": (curvax_hvp, (pot, system, graph, v))}
    if nequix_forces is not None:
        counter = iter(range(10 ** 6))
        calls["NequixCalculator forces+stress"] = (lambda: nequix_forces(next(counter)), ())
    t = timeit_interleaved(calls, repeat=repeat)
    err = float(jnp.max(jnp.abs(raw_forces(pot.model, system.positions, graph)
                                - curvax_forces(pot, system, graph))))
    t_raw = t["raw node_energies grad"][0]
    print(f"== Nequix forces: {len(atoms)} atoms Si, {int(graph.n_edges)} edges "
          f"(capacity {graph.mask.shape[0]}), float32, {jax.default_backend()}, median of {repeat}")
    for k, (tk, first) in t.items():
        print(f"  {k:32s} {tk * 1e3:9.2f} ms  (first call {first:5.1f} s)   ratio to raw {tk / t_raw:5.2f}")
    print(f"  max |F_curvax - F_raw| = {err:.2e} eV/Å")
    t_cx = t["curvax forces"][0]
    return t_cx / t_raw


def bench_neighbors(min_atoms, max_atoms, points, cutoff, repeat):
    sizes = np.unique(np.geomspace(min_atoms, max_atoms, points).astype(int))
    print(f"== Neighbour list (cell list, jit build, cutoff {cutoff} Å, fcc Ar, {jax.default_backend()})")
    print(f"  {'atoms':>8} {'edges':>10} {'bins':>12} {'allocate s':>11} {'build ms':>10} {'µs/atom':>8}")
    ns, ts = [], []
    for n in sizes:
        atoms = supercell(n)
        system = from_atoms(atoms, dtype=jnp.float32)
        t0 = time.perf_counter()
        spec, graph = allocate(system, cutoff, method="cells")
        jax.block_until_ready(graph)
        t_alloc = time.perf_counter() - t0
        assert not bool(graph.overflow)
        t, _ = timeit(build, system, spec, repeat=repeat)
        ns.append(len(atoms))
        ts.append(t)
        print(f"  {len(atoms):8d} {int(graph.n_edges):10d} {str(spec.bins):>12} {t_alloc:11.2f} "
              f"{t * 1e3:10.2f} {t / len(atoms) * 1e6:8.2f}")
    if len(ns) >= 2:
        b = np.polyfit(np.log(ns), np.log(ts), 1)[0]
        print(f"  scaling exponent b (t ∝ N^b, fit over {ns[0]}..{ns[-1]} atoms) = {b:.2f}")
        return b
    return None


def bench_small_cells(cutoff, repeat):
    """(3) the list build for cells from 1 to 3 cutoffs wide and up to 1372 atoms: each search
    (multi-image brute, minimum image, cell list) and what `allocate` picks."""
    print(f"== Neighbour list, small cells (cutoff {cutoff} Å, fcc Ar a = 5.26 Å, {jax.default_backend()})")
    print(f"  {'atoms':>6} {'bins':>10} {'auto':>9} {'brute ms':>9} {'minimage ms':>12} {'cells ms':>9}")
    for n in (2, 3, 4, 5, 6, 7):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((n, n, n))
        atoms.rattle(0.05, seed=0)
        system = from_atoms(atoms, dtype=jnp.float32)
        auto, _ = allocate(system, cutoff)
        t = {}
        for method in ("brute", "minimage", "cells"):
            if method == "brute" and len(atoms) > 500:  # (N, N, 27, 3) candidates: GBs
                t[method] = float("nan")
                continue
            try:
                spec, _ = allocate(system, cutoff, method=method)
            except ValueError:
                t[method] = float("nan")
                continue
            t[method] = timeit(build, system, spec, repeat=repeat)[0]
        print(f"  {len(atoms):6d} {str(auto.bins):>10} {auto.method:>9} {t['brute'] * 1e3:9.2f} "
              f"{t['minimage'] * 1e3:12.2f} {t['cells'] * 1e3:9.2f}")


def bench_md_skin(n_atoms, skin, steps=200, repeat=7):
    """(4) MD step cost with and without neighbour-list reuse vs E + F on a fixed list.

    E + F is timed as `steps` force evaluations inside one compiled loop (each on positions
    nudged by 1e-12 × the previous forces, so XLA cannot hoist it out of the loop), like the MD
    steps, so neither pays a per-call dispatch; the three are timed alternately (`repeat` rounds)
    and each ratio is the median of the per-round ratios, so that a change of the CPU's speed
    during the run cancels."""
    from curvax.potentials import LennardJones
    from curvax.thermal import md as M

    atoms = supercell(n_atoms)
    system = from_atoms(atoms, dtype=jnp.float32)
    pot = LennardJones(sigma=3.405, epsilon=0.0103, cutoff=8.5, r_inner=7.5).astype(jnp.float32)
    m = atoms.get_masses()
    v = M.maxwell_boltzmann(m, 50.0, seed=0)
    half = list_potential(pot)  # what MD evaluates: the half-list copy
    spec, graph = allocate(system, pot.cutoff, half=True)

    @eqx.filter_jit
    def ef_loop(s, g):
        def body(_, ef):
            s_i = s._replace(positions=s.positions + 1e-12 * ef[1])
            res = derivatives.properties(half, s_i, g, stress=False)
            return ef[0] + res["energy"], res["forces"]  # energy and forces, as the MD step
        return jax.lax.fori_loop(0, steps, body, (jnp.zeros((), s.positions.dtype), jnp.zeros_like(s.positions)))

    calls = {"E+F": (ef_loop, (system, graph))}
    for label, s_ in (("rebuild every step", 0.0), (f"skin {skin} Å", skin)):
        md = M.dynamics(pot, m, 5.0, flux_route=None, neighbor_skin=s_)
        state, aux = md.init(system, v)
        calls[label] = (lambda st, ax, md=md: md.apply(st, ax, steps), (state, aux))
    times = {k: [] for k in calls}
    for k, (fn, args) in calls.items():  # compile
        jax.block_until_ready(fn(*args))
    for _ in range(repeat):
        for k, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append((time.perf_counter() - t0) / steps)
    t_ef = np.asarray(times["E+F"])
    print(f"== MD with neighbour-list reuse: LJ Ar, {len(atoms)} atoms, rc 8.5 Å, half lists, {jax.default_backend()}, "
          f"{steps} steps per call, {repeat} interleaved rounds")
    print(f"  E+F on a fixed list (rc): {np.median(t_ef) * 1e3:8.2f} ms per evaluation")
    for k in list(calls)[1:]:
        t = np.asarray(times[k])
        r = t / t_ef
        print(f"  MD step, {k:>18}: {np.median(t) * 1e3:8.2f} ms  = {np.median(r):5.2f} × E+F "
              f"(rounds {r.min():.2f}–{r.max():.2f})", flush=True)


def bench_vs_jaxmd(sizes, repeat=5):
    """(5) curvax vs jax-md (Lennard-Jones, float64, rc 8.5 Å, dense jax-md neighbour format)."""
    try:
        from jax_md import energy as jm_energy
        from jax_md import space as jm_space
    except ImportError:
        print("== jax-md comparison skipped: jax_md is not importable (see the module doc)")
        return
    from curvax.potentials import LennardJones

    jax.config.update("jax_enable_x64", True)
    rc, sigma, eps = 8.5, 3.405, 0.0103
    pot = LennardJones(sigma=sigma, epsilon=eps, cutoff=rc, r_inner=7.5).astype(jnp.float64)
    print(f"== curvax vs jax-md: LJ Ar fcc, rc {rc} Å, float64, {jax.default_backend()}, median of {repeat} "
          f"(interleaved); ratios curvax / jax-md")
    print(f"  {'atoms':>7} list {'build':>8} {'list+E+F':>9} {'E+F fixed':>10}   (curvax ms / jax-md ms)")
    for n in sizes:
        atoms = supercell(n)
        system = from_atoms(atoms, dtype=jnp.float64)
        box = float(atoms.cell[0, 0])
        R = jnp.asarray(atoms.positions % box)
        disp, _ = jm_space.periodic(box)
        nfn, efn = jm_energy.lennard_jones_neighbor_list(disp, box, sigma=sigma, epsilon=eps, r_onset=7.5 / sigma,
                                                         r_cutoff=rc / sigma, dr_threshold=0.0)
        nbrs = nfn.allocate(R)
        calls = {"jb": (jax.jit(lambda r, nb: nb.update(r)), (R, nbrs)),
                 "ja": (jax.jit(lambda r, nb: jax.grad(efn)(r, nb.update(r))), (R, nbrs)),
                 "je": (jax.jit(lambda r, nb: (efn(r, nb), jax.grad(efn)(r, nb))), (R, nbrs))}
        for kind, p in (("half", list_potential(pot)), ("full", list_potential(pot, half_list=False))):
            spec, graph = allocate(system, rc, half=p.half_list)
            calls[kind + "b"] = (build, (system, spec))
            calls[kind + "a"] = (eqx.filter_jit(lambda s, p=p, spec=spec: derivatives.properties(
                p, s, build(s, spec), stress=False)["forces"]), (system,))
            calls[kind + "e"] = (eqx.filter_jit(lambda s, g, p=p: derivatives.properties(
                p, s, g, stress=False)["forces"]), (system, graph))
        t = timeit_interleaved(calls, repeat=repeat)
        for kind in ("half", "full"):
            cells = [(t[kind + c][0], t["j" + c][0]) for c in "bae"]
            print(f"  {len(atoms):7d} {kind} " + " ".join(f"{a / b:>8.2f}" for a, b in cells) + "   ("
                  + ", ".join(f"{a * 1e3:.1f}/{b * 1e3:.1f}" for a, b in cells) + ")", flush=True)


def bench_compile_vs_edges(max_atoms, repeat=2):
    """(6) lowering + compilation time [s] of E + F + σ on fixed graphs of growing size."""
    from curvax.potentials import LennardJones

    pot = LennardJones(sigma=3.405, epsilon=0.0103, cutoff=8.5, r_inner=7.5).astype(jnp.float32)
    print("== compile time vs edges: LJ Ar fcc, rc 8.5 Å, float32, E + F + σ on a fixed graph "
          f"(best of {repeat} fresh compilations)")
    print(f"  {'atoms':>7} {'edges':>9} {'compile s':>10} {'run s':>8}")
    n = 256
    while n <= max_atoms:
        atoms = supercell(n)
        system = from_atoms(atoms, dtype=jnp.float32)
        _, graph = allocate(system, pot.cutoff, capacity_multiplier=1.0)
        fn = jax.jit(lambda s, g: derivatives.properties(pot, s, g, stress=True)["forces"])
        times = []
        for _ in range(repeat):
            jax.clear_caches()
            t0 = time.perf_counter()
            compiled = fn.lower(system, graph).compile()
            times.append(time.perf_counter() - t0)
        t_run, _ = timeit(compiled, system, graph, repeat=1)
        print(f"  {len(atoms):7d} {int(graph.mask.sum()):9d} {min(times):10.2f} {t_run:8.3f}", flush=True)
        n *= 4


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="Nequix .nqx file")
    p.add_argument("--nequix-atoms", type=int, default=64, help="Si supercell size for the forces benchmark")
    p.add_argument("--min-atoms", type=int, default=1000)
    p.add_argument("--max-atoms", type=int, default=32000, help="largest cell (100000 for the full sweep)")
    p.add_argument("--points", type=int, default=4, help="number of sizes in the neighbour sweep")
    p.add_argument("--cutoff", type=float, default=6.0, help="neighbour cutoff [Å] (Nequix: 6)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-nequix", action="store_true")
    p.add_argument("--skip-neighbors", action="store_true")
    p.add_argument("--md-atoms", type=int, default=2048, help="atoms of the MD-with-skin benchmark (4)")
    p.add_argument("--md-skin", type=float, default=1.0, help="neighbour skin of benchmark (4) [Å]")
    p.add_argument("--only-md", action="store_true", help="run only benchmarks (4) and (5)")
    p.add_argument("--compile-atoms", type=int, default=16384,
                   help="largest cell of the compile-time sweep (6) (16 384 fcc Ar atoms ≈ 1.1 M edges)")
    p.add_argument("--only-compile", action="store_true", help="run only benchmark (6)")
    p.add_argument("--jaxmd-atoms", type=int, nargs="+", default=[256, 2048, 16384],
                   help="sizes of the jax-md comparison (5)")
    args = p.parse_args(argv)
    if args.only_compile:
        bench_compile_vs_edges(args.compile_atoms)
        return 0
    if args.only_md:
        bench_md_skin(args.md_atoms, args.md_skin)
        bench_vs_jaxmd(args.jaxmd_atoms, args.repeat)
        return 0
    if not args.skip_nequix:
        bench_nequix(args.model, args.nequix_atoms, args.repeat)
    if not args.skip_neighbors:
        bench_small_cells(8.5, args.repeat)
        bench_neighbors(args.min_atoms, args.max_atoms, args.points, args.cutoff, args.repeat)
    bench_md_skin(args.md_atoms, args.md_skin)
    bench_vs_jaxmd(args.jaxmd_atoms, args.repeat)
    bench_compile_vs_edges(args.compile_atoms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
