"""PFT benchmark: cost of a phonon training step vs an E/F/σ training step on the same batch,
structures/s, and peak memory of the sampled-HVP loss vs the dense-Hessian loss.

    .venv/bin/python benchmarks/bench_pft.py                 # defaults (2-core CPU: ≈ 20 min, mostly compiling)
    .venv/bin/python benchmarks/bench_pft.py --atoms 64 --batch 4 --memory-sizes 8 16 32 64 128

(1) one optimizer update of Nequix MP (float32, jit, median after compilation) on a batch of
    rattled Si supercells:
      EFS step     grad_θ [L_EFS]                         (forces + stress by the strain route)
      phonon step  grad_θ [100·L_H(one HVP) + 20·L_F]      (forces from the HVP's primal pass)
    target: phonon / EFS ≤ 2.5.
(2) compiled peak temporary memory (XLA memory analysis) of grad_θ of the per-structure
    Hessian loss: sampled (one HVP), sampled with the interaction blocks rematerialised
    (`potential.rematerialised()`, target ≤ 1.5 GB at 64 atoms) and dense (jax.hessian, 3N
    columns, only up to `--dense-max-atoms`), vs supercell size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from bench_core import timeit_interleaved
from curvax import batch as batching
from curvax.finetune import efs_data, training
from curvax.batch import graph_of
from curvax.hessian import hessian
from curvax.finetune.losses import (EFSWeights, batch_efs_loss, batch_phonon_loss, dense_hessian_loss, hessian_column_loss)
from curvax.potentials import load_potential
from curvax.system import from_atoms

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "nequix-mp-1.nqx"


def si_batch(pot, n_atoms, n_structures, seed=0):
    """Rattled Si supercells of about n_atoms atoms, labelled by `pot` itself, with FC targets."""
    unit = bulk("Si", "diamond", a=5.43, cubic=n_atoms % 8 == 0)
    m = max(1, n_atoms // len(unit))  # unit cells, as a near-cubic a×b×c = m
    reps = min(((a, b, m // (a * b)) for a in range(1, m + 1) for b in range(a, m + 1) if m % (a * b) == 0
                and m // (a * b) >= b), key=lambda r: r[2] - r[0])
    items = []
    for k in range(n_structures):
        atoms = unit.repeat(reps)
        atoms.rattle(0.03, seed=seed + k)
        s = from_atoms(atoms, dtype=jnp.float32)
        items.append((s, graph_of(s, pot.cutoff), {}))
    b = efs_data.pseudo_label(pot, batching.stack(batching.pad_all(items)))
    fc = jnp.stack([hessian(pot, batching.take(b, k).system, batching.take(b, k).graph) for k in range(n_structures)])
    return b, fc


def bench_steps(pot, n_atoms, n_structures, repeat):
    batch, fc = si_batch(pot, n_atoms, n_structures)
    opt = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-5))
    state, static = training.init_state(pot, opt)
    efs = training.make_update(lambda m, b, k: batch_efs_loss(m, b, EFSWeights(500.0, 200.0, 50.0)), opt)
    phon = training.make_update(
        lambda m, b, k: batch_phonon_loss(m, b[0], b[1], k, 100.0, EFSWeights(0.0, 20.0, 0.0)), opt)
    key = jax.random.PRNGKey(0)
    t = timeit_interleaved({"EFS step": (efs, (state, static, batch, key)),
                            "phonon step": (phon, (state, static, (batch, fc), key))}, repeat=repeat)
    n = batch.system.positions.shape[1]
    print(f"== training steps: batch of {n_structures} Si supercells, {n} atoms, "
          f"{batch.graph.mask.shape[1]} edges each, Nequix float32, {jax.default_backend()}, median of {repeat}")
    for k, (tk, first) in t.items():
        print(f"  {k:12s} {tk * 1e3:9.1f} ms  (first call {first:5.1f} s)   {n_structures / tk:7.2f} structures/s")
    ratio = t["phonon step"][0] / t["EFS step"][0]
    print(f"  phonon step / EFS step = {ratio:.2f}   (target ≤ 2.5)")
    return ratio


def peak_bytes(fn, *args):
    """Temporary + output bytes of the compiled `fn(*args)` (XLA memory analysis)."""
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes


def bench_memory(pot, sizes, dense_max_atoms=16):
    print("== memory of grad_θ of the Hessian loss per structure (compiled temp + output)")
    print(f"  {'atoms':>6} {'edges':>7} {'HVP MiB':>9} {'HVP remat MiB':>14} {'remat/HVP':>10} "
          f"{'dense MiB':>10} {'dense/HVP':>10}")
    params, static = eqx.partition(pot, eqx.is_inexact_array)
    static_remat = eqx.partition(pot.rematerialised(), eqx.is_inexact_array)[1]
    key = jax.random.PRNGKey(0)
    for n in sizes:
        batch, fc = si_batch(pot, n, 1)
        s, f = batching.take(batch, 0), fc[0]

        def sampled(p, static=static):
            return jax.grad(lambda q: hessian_column_loss(eqx.combine(q, static), s, f, key))(p)

        def dense(p):
            return jax.grad(lambda q: dense_hessian_loss(eqx.combine(q, static), s, f, "mae"))(p)

        a = peak_bytes(sampled, params)
        r = peak_bytes(lambda p: sampled(p, static_remat), params)
        n_atoms = s.system.positions.shape[0]
        b = peak_bytes(dense, params) if n_atoms <= dense_max_atoms else float("nan")
        print(f"  {n_atoms:6d} {int(np.sum(np.asarray(s.graph.mask))):7d} {a / 2**20:9.1f} {r / 2**20:14.1f} "
              f"{r / a:10.2f} {b / 2**20:10.1f} {b / a:10.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--atoms", type=int, default=16, help="supercell size for the step timing")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[2, 8, 16])
    p.add_argument("--dense-max-atoms", type=int, default=16)
    p.add_argument("--remat", action="store_true", help="time the steps with rematerialised interaction blocks")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    pot = load_potential(args.model)
    if args.atoms:
        bench_steps(pot.rematerialised(args.remat), args.atoms, args.batch, args.repeat)
    if args.memory_sizes:
        bench_memory(pot, args.memory_sizes, args.dense_max_atoms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
