"""Data-parallel scaling of the PFT phonon step (`curvax.parallel`): structures/s vs devices.

    .venv/bin/python benchmarks/bench_scale.py                         # every local device
    .venv/bin/python benchmarks/bench_scale.py --virtual-cpus 2        # 2 virtual CPU devices
    .venv/bin/python benchmarks/bench_scale.py --model lj --atoms 2 2 2

One optimizer update of the phonon loss (one sampled HVP + forces per structure, Nequix MP by
default, rattled Si supercells) with a per-device batch of `--per-device` structures, on 1, 2,
4, ... devices (global batch = per-device × devices). Prints structures/s, speed-up and the
parallel efficiency (speed-up / devices), and checks that the loss of the N-device step equals
the 1-device step on the same global batch. Virtual CPU devices share the same cores: their
numbers check correctness and overhead, not speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "../../shared/models/nequix-mp-1.nqx"))
    p.add_argument("--atoms", type=int, nargs=3, default=[1, 1, 2], help="Si conventional cells (8 atoms each)")
    p.add_argument("--per-device", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--virtual-cpus", type=int, default=0, help="split the CPU into this many JAX devices")
    args = p.parse_args(argv)
    if args.virtual_cpus:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.virtual_cpus}"
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from ase.build import bulk

    from curvax import batch as batching
    from curvax import load_potential, parallel
    from curvax.finetune import training
    from curvax.finetune.losses import EFSWeights, batch_phonon_loss
    from curvax.system import from_atoms

    pot = load_potential("lj:sigma=2.1,epsilon=0.1,cutoff=5.0" if args.model == "lj" else args.model)
    n_max = jax.device_count()
    counts = [n for n in (1, 2, 4, 8, 16) if n <= n_max]
    rng = np.random.default_rng(0)
    items = []
    for _ in range(args.per_device * n_max):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(tuple(args.atoms))
        a.positions += rng.normal(0, 0.03, a.positions.shape)
        s = from_atoms(a, dtype=np.float32)
        items.append((s, batching.graph_of(s, pot.cutoff), {"forces": np.zeros((len(a), 3))}))
    batch = batching.stack(batching.pad_all(items))
    n_atoms = batch.system.positions.shape[1]
    fc = np.zeros((len(items), n_atoms, n_atoms, 3, 3), np.float32)
    opt = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-5))

    def loss(model, b, key):
        return batch_phonon_loss(model, b[0], b[1], key, 100.0, EFSWeights(0.0, 20.0, 0.0))

    print(f"{jax.devices()[0].device_kind} ×{n_max}; {n_atoms} atoms per structure, {args.per_device} per device")
    print(f"{'devices':>8s} {'global batch':>13s} {'step [s]':>9s} {'structures/s':>13s} {'speed-up':>9s} "
          f"{'efficiency':>11s} {'loss':>12s}")
    base = None
    for n in counts:
        mesh = parallel.data_mesh(n)
        state, static = training.init_state(pot, opt)
        update = training.make_update(loss, opt, 0.9, mesh)
        sub = (batching.take(batch, np.arange(args.per_device * n)), fc[: args.per_device * n])
        key = jax.random.PRNGKey(0)
        _, m = update(state, static, sub, key)
        jax.block_until_ready(m["loss"])
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _, m = update(state, static, sub, key)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        rate = args.per_device * n / t
        base = base or rate
        print(f"{n:8d} {args.per_device * n:13d} {t:9.3f} {rate:13.2f} {rate / base:9.2f} {rate / base / n:11.2f} "
              f"{float(m['loss']):12.6g}", flush=True)
    # the same global batch on 1 device and on all of them: equal loss
    full = (batch, fc)
    one = training.make_update(loss, opt, 0.9)(*training.init_state(pot, opt), full, jax.random.PRNGKey(1))[1]
    many = training.make_update(loss, opt, 0.9, parallel.data_mesh("all"))(*training.init_state(pot, opt), full,
                                                                            jax.random.PRNGKey(1))[1]
    print(f"global batch of {len(items)} on 1 vs {n_max} devices: loss {float(one['loss']):.7g} vs "
          f"{float(many['loss']):.7g} (relative difference {abs(float(many['loss']) / float(one['loss']) - 1):.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
