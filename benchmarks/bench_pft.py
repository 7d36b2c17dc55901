"""PFT benchmark: cost of a phonon training step vs an E/F/σ training step on the same batch,
structures/s, peak memory of the sampled-HVP loss vs the dense-Hessian loss, and (optional)
the gradient noise per CPU-second of the probe schemes.

    .venv/bin/python benchmarks/bench_pft.py                 # defaults (2-core CPU: ≈ 20 min, mostly compiling)
    .venv/bin/python benchmarks/bench_pft.py --atoms 128 --batch 4 --remat-edges 128 --memory-sizes 64 128 --plain-max-atoms 0
    .venv/bin/python benchmarks/bench_pft.py --atoms 0 --memory-sizes --probe-ablation 4 --ablation-materials 48
                                                             # (3) only (2-core CPU: ≈ 35 min)

(1) one optimizer update of Nequix MP (float32, jit, median after compilation) on a batch of
    rattled Si supercells:
      EFS step     grad_θ [L_EFS]                         (forces + stress by the strain route)
      phonon step  grad_θ [100·L_H(one HVP) + 20·L_F]      (forces from the HVP's primal pass)
    target: phonon / EFS ≤ 2.5.
(2) compiled peak memory (XLA memory analysis, temporary + output) and wall time of grad_θ of
    the per-structure Hessian loss: sampled (one HVP), plain (up to `--plain-max-atoms`) and
    with the edge messages rematerialised in chunks (`potential.rematerialised()`, target
    ≤ 1.5 GB at 64 atoms), and dense (jax.hessian, 3N columns, up to `--dense-max-atoms`),
    vs supercell size.
(3) `--probe-ablation R`: gradient noise per CPU-second of the probe schemes (unit columns /
    Gaussian probes, probes per structure) on the main job's own training data (phonondb unit
    cells ≤ `--ablation-atoms` atoms, DFT force constants folded onto them, Nequix MP, MAE
    Hessian loss × 100 as shipped). For every structure of the pool, R probe draws of the
    parameter gradient g (one structure per call): the time per structure t (median wall,
    compilation excluded), the probe noise V_probe and the structure-sampling noise V_structure
    (`gradient_noise`), relative to ‖ḡ‖². A step of B structures has relative variance ν / B,
    ν = (V_probe + V_structure) / ‖ḡ‖², and costs ≈ B·t, so ν·t — whatever B — is the CPU time
    a scheme needs to average its gradient noise down to its own gradient's size: the smaller,
    the more signal per CPU-second. Unit and Gaussian probes have different means (unit: the
    dense-Hessian MAE; Gaussian: E|(H − Φ)v|); cos(ḡ_unit, ḡ_Gauss) says how far they agree.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk
from jax.flatten_util import ravel_pytree

from bench_core import timeit_interleaved
from curvax import batch as batching
from curvax import compilation
from curvax.finetune import efs_data, training
from curvax.batch import graph_of
from curvax.hessian import hessian
from curvax.finetune.losses import (EFSWeights, batch_efs_loss, batch_phonon_loss, dense_hessian_loss, hessian_column_loss)
from curvax.potentials import load_potential
from curvax.potentials.base import REMAT_EDGE_CHUNK
from curvax.system import from_atoms

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "nequix-mp-1.nqx"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pft-nequix-mp.yaml"


def si_batch(pot, n_atoms, n_structures, seed=0, fc_scale=1.0):
    """Rattled Si supercells of about n_atoms atoms, labelled by `pot` itself, with FC targets:
    `fc_scale` × `pot`'s own Hessian (0: zero targets, without computing the Hessian)."""
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
    if not fc_scale:
        n = b.system.positions.shape[1]
        return b, jnp.zeros((n_structures, n, n, 3, 3), b.system.positions.dtype)
    fc = jnp.stack([hessian(pot, batching.take(b, k).system, batching.take(b, k).graph) for k in range(n_structures)])
    return b, fc_scale * fc


def bench_steps(pot, n_atoms, n_structures, repeat):
    batch, fc = si_batch(pot, n_atoms, n_structures, fc_scale=1.0 if n_atoms <= 32 else 0.0)  # timing: any target
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
    print(f"  phonon step / EFS step = {ratio:.2f}   (target ≤ 2.5);  peak RSS of the process so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
    return ratio


def compiled_peak(fn, *args):
    """(compiled `fn`, its temporary + output bytes by XLA's memory analysis)."""
    c = jax.jit(fn).lower(*args).compile()
    m = c.memory_analysis()
    return c, m.temp_size_in_bytes + m.output_size_in_bytes


def bench_memory(pot, sizes, dense_max_atoms=16, plain_max_atoms=32, edge_chunk=REMAT_EDGE_CHUNK, repeat=3):
    print(f"== grad_θ of the Hessian loss per structure (one sampled HVP): compiled peak (temp + output) and "
          f"median wall of {repeat} calls; remat: edge messages {edge_chunk} at a time under jax.checkpoint")
    print(f"  {'atoms':>6} {'edges':>7} {'plain MiB':>10} {'remat MiB':>10} {'remat/plain':>12} {'plain s':>8} "
          f"{'remat s':>8} {'remat compile s':>16} {'dense MiB':>10}")
    key = jax.random.PRNGKey(0)
    for n in sizes:
        # a target the model misses (a gradient of size); zero beyond the dense size (its Hessian
        # alone took 17 GB at 128 atoms): the cost does not depend on the target's values
        batch, fc = si_batch(pot, n, 1, fc_scale=0.9 if n <= max(dense_max_atoms, plain_max_atoms) else 0.0)
        s, f = batching.take(batch, 0), fc[0]
        n_atoms = s.system.positions.shape[0]
        row = {}
        for name, model in (("plain", pot), ("remat", pot.rematerialised(edge_chunk))):
            if name == "plain" and n_atoms > plain_max_atoms:
                continue
            params, static = eqx.partition(model, eqx.is_inexact_array)
            t0 = time.perf_counter()
            c, peak = compiled_peak(jax.grad(lambda q, st=static: hessian_column_loss(eqx.combine(q, st), s, f, key)),
                                    params)
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(c(params))
            wall = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                jax.block_until_ready(c(params))
                wall.append(time.perf_counter() - t0)
            row[name] = (peak / 2**20, float(np.median(wall)), compile_s)
        dense = float("nan")
        if n_atoms <= dense_max_atoms:
            params, static = eqx.partition(pot, eqx.is_inexact_array)
            dense = compiled_peak(jax.grad(lambda q: dense_hessian_loss(eqx.combine(q, static), s, f, "mae")), params)[1]
        plain = row.get("plain", (float("nan"),) * 3)
        print(f"  {n_atoms:6d} {int(np.sum(np.asarray(s.graph.mask))):7d} {plain[0]:10.1f} {row['remat'][0]:10.1f} "
              f"{row['remat'][0] / plain[0]:12.2f} {plain[1]:8.2f} {row['remat'][1]:8.2f} {row['remat'][2]:16.0f} "
              f"{dense / 2**20:10.1f}", flush=True)


ABLATION_SCHEMES = (("unit", 1), ("unit", 2), ("random", 1), ("random", 2), ("random", 4))  # (probe, probes)


def ablation_pool(pot, max_atoms, n_materials, config=DEFAULT_CONFIG):
    """The first `n_materials` training unit cells (≤ `max_atoms` atoms) of the main job's
    split, one padded bucket, with their folded DFT force constants."""
    from curvax.config import load_config
    from curvax.finetune import pft

    cfg = load_config(config, pft.FinetuneConfig)
    paths = pft.data_split(cfg, pot.elements)["train"][: 4 * n_materials]  # read no more archives than needed
    try:
        names, (bucket,) = pft.load_phonon_training_set(paths, pot.cutoff, max_atoms, pot, cell="unitcell")
    except ValueError:  # none that small among them
        names = []
    if len(names) < n_materials:
        raise ValueError(f"{config}: {len(names)} training unit cells ≤ {max_atoms} atoms among its first "
                         f"{len(paths)} training materials, need --ablation-materials {n_materials}: "
                         "raise --ablation-atoms or lower --ablation-materials")
    keep = np.arange(n_materials)
    return [names[k] for k in keep], batching.take(bucket.structures, keep), jnp.asarray(bucket.fc[keep], jnp.float32)


def gradient_noise(gs):
    """Noise of a stochastic gradient over a finite pool: `gs` (S structures, R probe draws, P
    parameters) -> (‖ḡ‖², V_probe, V_structure): ḡ the pool's mean gradient, V_probe the mean
    over structures of E_v‖g(s, v) − ḡ(s)‖² (one draw), V_structure the pool variance of the
    per-structure means ḡ(s) (less their V_probe / R sampling part). A step of batch B with
    structures drawn from the pool has E‖g − ḡ‖² = (V_structure + V_probe) / B."""
    s, r = gs.shape[:2]
    per = gs.mean(1)
    v_probe = float(np.sum((gs - per[:, None]) ** 2) / (s * (r - 1)))
    mean = per.mean(0)
    v_struct = float(np.sum((per - mean) ** 2) / s) - v_probe / r
    return float(mean @ mean), v_probe, v_struct


def bench_probe_ablation(pot, draws, max_atoms, n_materials, seed=0):
    names, pool, fc = ablation_pool(pot, max_atoms, n_materials)
    n_pool = fc.shape[0]
    print(f"== probe ablation: {n_pool} phonondb training unit cells ≤ {max_atoms} atoms "
          f"(padded to {pool.system.positions.shape[1]} atoms / {pool.graph.mask.shape[1]} edges), "
          f"Nequix float32, MAE Hessian loss × 100, {draws} probe draws per structure, one structure per "
          f"call, {jax.default_backend()}")
    params, static = eqx.partition(pot, eqx.is_inexact_array)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_pool * draws)
    rows, means = [], {}
    for mode, n_probes in ABLATION_SCHEMES:
        @eqx.filter_jit
        def grad(p, b, f, key, mode=mode, n_probes=n_probes):
            return jax.grad(lambda q: batch_phonon_loss(eqx.combine(q, static), b, f, key, 100.0,
                                                        EFSWeights(0.0, 0.0, 0.0), mode, "mae", n_probes)[0])(p)

        jax.block_until_ready(grad(params, batching.take(pool, np.array([0])), fc[:1], keys[0]))  # compile
        gs, ts = np.zeros((n_pool, draws, ravel_pytree(params)[0].size)), []
        for i in range(n_pool):
            b, f = batching.take(pool, np.array([i])), fc[i:i + 1]
            for r in range(draws):
                t = time.perf_counter()
                g = jax.block_until_ready(grad(params, b, f, keys[i * draws + r]))
                ts.append(time.perf_counter() - t)
                gs[i, r] = np.asarray(ravel_pytree(g)[0], np.float64)
        signal, v_probe, v_struct = gradient_noise(gs)
        t = float(np.median(ts))
        means[(mode, n_probes)] = gs.mean((0, 1))
        jack = np.array([(vp + vs) / sig for sig, vp, vs in
                         (gradient_noise(np.delete(gs, i, 0)) for i in range(n_pool))])  # leave one structure out
        err = float(np.sqrt((n_pool - 1) * np.mean((jack - jack.mean()) ** 2)))
        rows.append((mode, n_probes, t, v_probe / signal, v_struct / signal, err))
        print(f"  {mode:6s} × {n_probes}: {t:5.2f} s per structure, V_probe/‖ḡ‖² {v_probe / signal:7.2f}, "
              f"V_structure/‖ḡ‖² {v_struct / signal:7.2f} (ν ± {err:.2f}, jackknife over structures)", flush=True)
    print("  ν = (V_structure + V_probe) / ‖ḡ‖² per structure of a step (a batch of B divides it by B);\n"
          "  ν·t: CPU-seconds of steps to average the gradient noise down to the gradient's size")
    ref = next(r for r in rows if r[:2] == ("random", 2))
    print(f"  {'probe':6s} {'probes':>6s} {'s/structure':>11s} {'V_probe':>8s} {'V_struct':>8s} {'ν':>14s} "
          f"{'ν·t s':>7s} {'ν·t / shipped':>14s}")
    for mode, k, t, vp, vs, err in rows:
        print(f"  {mode:6s} {k:6d} {t:11.2f} {vp:8.2f} {vs:8.2f} {vp + vs:7.2f} ± {err:4.2f} {(vp + vs) * t:7.2f} "
              f"{(vp + vs) * t / ((ref[3] + ref[4]) * ref[2]):14.2f}")
    u, g = means[("unit", 2)], means[("random", 4)]  # the most probes of each kind: the least noisy means
    print(f"  cos(mean gradient, unit columns vs Gaussian probes) = {u @ g / np.sqrt((u @ u) * (g @ g)):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--atoms", type=int, default=16, help="supercell size for the step timing")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[2, 8, 16])
    p.add_argument("--dense-max-atoms", type=int, default=16)
    p.add_argument("--plain-max-atoms", type=int, default=32,
                   help="(2): the plain program only up to this size (its third-order compile grows with the edges)")
    p.add_argument("--remat-edges", type=int, default=0, metavar="N",
                   help="(1): time the steps with the edge messages N at a time under jax.checkpoint (0: plain)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--probe-ablation", type=int, default=0, metavar="R",
                   help="(3): gradient noise per CPU-second of the probe schemes, R probe draws per structure (0: skip)")
    p.add_argument("--ablation-atoms", type=int, default=8, help="(3): unit cells of at most this many atoms")
    p.add_argument("--ablation-materials", type=int, default=24, help="(3): the pool of training unit cells")
    args = p.parse_args(argv)
    if args.probe_ablation and (args.probe_ablation < 2 or args.ablation_materials < 2):
        p.error("--probe-ablation and --ablation-materials must be ≥ 2 (variances over draws and structures)")
    if args.probe_ablation:
        compilation.set_xla_cpu_flags()  # as the command line runs the main job
    pot = load_potential(args.model)
    if args.atoms:
        bench_steps(pot.rematerialised(args.remat_edges), args.atoms, args.batch, args.repeat)
    if args.memory_sizes:
        bench_memory(pot, args.memory_sizes, args.dense_max_atoms, args.plain_max_atoms)
    if args.probe_ablation:
        bench_probe_ablation(pot, args.probe_ablation, args.ablation_atoms, args.ablation_materials)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
