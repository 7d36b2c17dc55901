"""Relaxation fine-tuning benchmark: memory and time of one training-step gradient
dL/dθ (L = relaxation loss of `curvax.relax.metrics` after a positions + cell FIRE relaxation)
vs the number of unrolled steps, for plain BPTT, checkpointed BPTT, implicit differentiation and
the hybrid (unrolled head + implicit end point, `curvax.relax.adjoints.Hybrid`).

    .venv/bin/python benchmarks/bench_relax.py                       # LJ, defaults (CPU: ~minutes)
    .venv/bin/python benchmarks/bench_relax.py --model ../shared/models/nequix-mp-1.nqx --repeat 2
    .venv/bin/python benchmarks/bench_relax.py --steps 10 50 200 500 --reps 4 4 4
    # issue 12: Nequix MP, Si 2×2×2 + interstitial (65 atoms), 50 steepest-descent steps, positions only
    .venv/bin/python benchmarks/bench_relax.py --model ../shared/models/nequix-mp-1.nqx --reps 2 2 2 \
        --defect interstitial --method sd --step-size 0.01 --no-cell --steps 50 \
        --modes bptt checkpoint implicit hybrid --hybrid-steps 10 --repeat 1

Memory: XLA's compiled memory analysis of the jitted gradient
(`jax.jit(f).lower(...).compile().memory_analysis()`: temporaries + outputs, bytes), i.e. the peak
working set XLA plans for, independent of the allocator. Time: median wall time of `--repeat`
calls after compilation. Prints a table and the ratios checkpoint/BPTT and implicit/BPTT.
Structure: a rattled, strained fcc supercell (`--reps` conventional cells; LJ Ar-like σ = 1 by
default, or Si diamond for a Nequix model; `--defect` removes atom 0 or adds a tetrahedral
interstitial), relaxed with fmax = 0 so every step is executed. Gradients are compared with
BPTT's: ‖g − g_BPTT‖ / ‖g_BPTT‖ over all parameters.
"""
from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import numpy as np
from ase.build import bulk

from curvax import from_atoms
from curvax.relax import make_batch, relax
from curvax.relax.metrics import batch_loss
from curvax.potentials.base import parameter_dtype
from curvax.potentials import load_potential
from curvax.relax.adjoints import from_name


def structures(model, reps, seed=0, defect="none"):
    if model.startswith("lj"):
        ref = bulk("Ar", "fcc", a=1.55, cubic=True).repeat(reps)
    else:
        ref = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    if defect == "vacancy":
        del ref[0]
    elif defect == "interstitial":  # tetrahedral site of the first conventional cell
        ref.append(ref[0])
        ref.positions[-1] = np.diag(ref.cell.array) / np.asarray(reps) * 0.5
    start = ref.copy()
    rng = np.random.default_rng(seed)
    start.set_cell(start.cell.array * 1.02, scale_atoms=True)
    start.positions += rng.normal(0, 0.03, start.positions.shape)
    return start, ref


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lj:sigma=1.0,cutoff=2.5", help="lj:... spec or Nequix .nqx path")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--modes", nargs="+", default=["bptt", "checkpoint", "implicit"])
    p.add_argument("--method", default="fire", choices=["fire", "sd"])
    p.add_argument("--step-size", type=float, default=0.01, help="steepest descent η [Å²/eV]")
    p.add_argument("--hybrid-steps", type=int, default=10, help="hybrid: unrolled (BPTT) head steps")
    p.add_argument("--defect", default="none", choices=["none", "vacancy", "interstitial"])
    p.add_argument("--no-cell", action="store_true", help="positions only")
    p.add_argument("--reps", type=int, nargs=3, default=[3, 3, 3], help="conventional cells (default 3 3 3)")
    p.add_argument("--skin", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--x64", action="store_true")
    args = p.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    pot = load_potential(args.model)
    dtype = parameter_dtype(pot)
    start, ref = structures(args.model, tuple(args.reps), defect=args.defect)
    cell = not args.no_cell
    relaxer = {"step_size": args.step_size} if args.method == "sd" else {}
    sb = make_batch([from_atoms(start, dtype=dtype)], pot.cutoff, args.skin)
    rb = make_batch([from_atoms(ref, dtype=dtype)], pot.cutoff, args.skin)
    params, static = eqx.partition(pot, eqx.is_inexact_array)
    print(f"model {args.model}; {len(start)} atoms, {int(sb.graph.mask.sum())} edges; "
          f"device {jax.devices()[0].platform}; {'positions + cell' if cell else 'positions'} {args.method}, fmax = 0")
    print(f"{'steps':>6s} {'mode':>11s} {'memory [MiB]':>13s} {'time [s]':>10s} {'compile [s]':>12s} "
          f"{'|g-g_bptt|/|g_bptt|':>20s}")
    table, flat = {}, {}
    for n in args.steps:
        for mode in args.modes:
            def loss(prm, n=n, mode=mode):
                cg = {"cg_tol": 1e-6, "cg_maxiter": 200} if mode in ("implicit", "hybrid") else {}
                adjoint = from_name(mode, unrolled_steps=args.hybrid_steps, step_size=args.step_size, **cg)
                r = relax(eqx.combine(prm, static), sb, cell=cell, method=args.method, steps=n, fmax=0.0,
                          adjoint=adjoint, skin=args.skin, **relaxer)
                return batch_loss(r, rb.system.positions, rb.system.cell, rb.system.numbers, rb.node_mask)

            t0 = time.perf_counter()
            compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
            t_compile = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            mib = (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2 ** 20 if mem is not None else float("nan")
            out = jax.block_until_ready(compiled(params))
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = jax.block_until_ready(compiled(params))
                times.append(time.perf_counter() - t0)
            flat[n, mode] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out[1])]).astype(float)
            ref_g = flat.get((n, "bptt"))
            rel = np.linalg.norm(flat[n, mode] - ref_g) / np.linalg.norm(ref_g) if ref_g is not None else float("nan")
            table[n, mode] = (mib, float(np.median(times)))
            print(f"{n:6d} {mode:>11s} {mib:13.2f} {table[n, mode][1]:10.4f} {t_compile:12.1f} {rel:20.3e}", flush=True)
    if "bptt" in args.modes:
        print("\nratios to plain BPTT (memory, time):")
        for n in args.steps:
            b = table[n, "bptt"]
            print(f"  {n:4d} steps: " + ", ".join(f"{m} {table[n, m][0] / b[0]:.3f} / {table[n, m][1] / b[1]:.2f}"
                                                 for m in args.modes if m != "bptt"))


if __name__ == "__main__":
    main()
