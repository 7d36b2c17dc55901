"""Thermal-transport benchmark: (1) heat-flux cost relative to forces, (2) FC3 by AD vs phono3py.

    .venv/bin/python benchmarks/bench_thermal.py                       # defaults (CPU: a few minutes)
    .venv/bin/python benchmarks/bench_thermal.py --flux-model nequix --sizes 8 64   # Nequix (slow on CPU)
    .venv/bin/python benchmarks/bench_thermal.py --fc3-model nequix    # FC3 of Nequix on Si-PBE's dataset
    .venv/bin/python benchmarks/bench_thermal.py --check               # periodic Nequix: unfolded = Hardy

(1) For supercells of increasing size (fcc Ar with smooth LJ, or diamond Si with Nequix MP),
    median times (jit, after compilation) of
      forces    periodic force pass (derivatives.properties, stress=False)
      edge      heat_flux(route="edge")      (force pass + one edge contraction)
      unfolded  heat_flux(route="unfolded")  (jvp + vjp over the unfolded system of M replicas)
    and the ratios edge/forces, unfolded/forces, with M/N (unfolded size over cell size). The
    unfolded route costs ≈ (M/N) × (jvp+vjp)/(vjp): it tends to a constant for large cells.
(2) FC3: curvax AD (`fc3.compute_fc3`: one jvp-of-HVP per supercell of phono3py's dataset) vs
    phono3py finite displacements with the same model (±u: one force call per supercell):
    wall time and number of model calls (AD products count as calls).
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

from curvax import derivatives, neighbors
from curvax.thermal import heat_flux as hf
from curvax.system import from_atoms

ROOT = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_MODEL = ROOT / "models" / "nequix-mp-1.nqx"
SI_PBE = ROOT / "data" / "kappa" / "Si-PBE"


def median_times(calls, repeat=3):
    """Median wall times [s] of {name: (fn, args)} after compilation, calls alternated in each
    round so that load from other processes affects all alike."""
    for fn, a in calls.values():
        jax.block_until_ready(fn(*a))
    ts = {k: [] for k in calls}
    for _ in range(repeat):
        for k, (fn, a) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


def flux_model(name, model_path):
    if name == "lj":
        from curvax.potentials import LennardJones

        pot = LennardJones(3.405, 0.010323, cutoff=6.0, r_inner=5.0, smooth=True)
        unit = bulk("Ar", "fcc", 5.30, cubic=True)
    else:
        from curvax import load_potential

        pot = load_potential(str(model_path))
        unit = bulk("Si", "diamond", 5.43, cubic=True)
    return pot, unit


def bench_flux(args):
    pot, unit = flux_model(args.flux_model, args.model)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    print(f"(1) heat flux / forces, {args.flux_model} (cutoff {pot.cutoff} Å, "
          f"{pot.n_interactions} interaction step(s)), {jax.default_backend()}")
    print(f"{'N':>6} {'M':>7} {'M/N':>6} {'forces ms':>10} {'edge ms':>9} {'unfolded ms':>12} "
          f"{'edge/F':>7} {'unf/F':>7}")

    @eqx.filter_jit
    def forces(system, spec):
        g = neighbors.build(system, spec)
        return derivatives.properties(pot, system, g, stress=False)["forces"]

    for n_target in args.sizes:
        k = max(1, int(round((n_target / len(unit)) ** (1 / 3))))
        atoms = unit.repeat((k, k, k))
        atoms.rattle(0.03, seed=0)
        s = from_atoms(atoms, dtype=dtype)
        m = jnp.asarray(atoms.get_masses(), dtype)
        v = jnp.asarray(np.random.default_rng(0).normal(size=(len(atoms), 3)) * 0.005, dtype)
        spec, _ = neighbors.allocate(s, pot.cutoff)
        fe = hf.heat_flux(pot, m, "edge")
        st_e = fe.init(s)
        fu = hf.heat_flux(pot, m, "unfolded")
        st_u = fu.init(s)
        big_m = int(st_u[1].idx.shape[0])
        t = median_times({"f": (forces, (s, spec)),
                          "e": (lambda s, v: fe.apply(s, v, st_e).flux, (s, v)),
                          "u": (lambda s, v: fu.apply(s, v, st_u).flux, (s, v))}, repeat=args.repeat)
        t_f, t_e, t_u = t["f"], t["e"], t["u"]
        print(f"{len(atoms):6d} {big_m:7d} {big_m / len(atoms):6.1f} {1e3 * t_f:10.2f} {1e3 * t_e:9.2f} "
              f"{1e3 * t_u:12.2f} {t_e / t_f:7.2f} {t_u / t_f:7.2f}")


def bench_fc3(args):
    from curvax.phonons import fc3 as F
    from curvax.phonons.convert import phono3py_from_atoms

    if args.fc3_model == "morse":
        from curvax.potentials import Morse

        pot = Morse(epsilon=0.5, r0=2.35, rho0=5.0, rcut1=1.3, rcut2=1.8)
        ph3 = phono3py_from_atoms(bulk("Si", "diamond", 5.43), [2, 2, 2], primitive_matrix="P")
        what = "Morse, Si 2×2×2 primitive (16 atoms)"
    else:
        import phono3py

        from curvax import load_potential

        pot = load_potential(str(args.model))
        ph3 = phono3py.load(str(SI_PBE / "phono3py_disp.yaml"), produce_fc=False, log_level=0)
        what = "Nequix MP, Si-PBE dataset (2×2×2 conventional, 64 atoms)"
    print(f"\n(2) FC3, {what}, {jax.default_backend()}")
    t0 = time.perf_counter()
    res = F.compute_fc3(ph3, pot)
    t_ad = time.perf_counter() - t0
    t0 = time.perf_counter()
    res2 = F.compute_fc3(ph3, pot)  # compiled
    t_ad2 = time.perf_counter() - t0
    t0 = time.perf_counter()
    fd, n_fd = F.finite_displacement_fc3(ph3, pot, distance=0.03)
    t_fd = time.perf_counter() - t0
    err = np.abs(fd - res2.fc3).max() / np.abs(res2.fc3).max()
    print(f"  AD  : {res.n_third_order} jvp-of-HVP products + {res.n_hvp} HVPs (FC2); "
          f"{t_ad:.1f} s first call (compile), {t_ad2:.1f} s compiled")
    print(f"  FD  : {n_fd} force calls (±0.03 Å) + phono3py fit; {t_fd:.1f} s")
    print(f"  calls FD/AD = {n_fd / res.n_third_order:.2f}; time FD/AD(compiled) = {t_fd / t_ad2:.2f}; "
          f"max |FC3_FD − FC3_AD| / max |FC3| = {err:.2e} (FD truncation/round-off)")


def check_nequix_periodic(args):
    """Periodic Nequix (4 steps, 24 Å range): unfolded flux equals the O(N²) Hardy flux."""
    from curvax import load_potential

    jax.config.update("jax_enable_x64", True)
    with jax.enable_x64(False):
        pot = load_potential(str(args.model))
    pot = pot.astype(jnp.float64)
    atoms = bulk("Si", "diamond", 5.43)  # 2 atoms, primitive fcc cell
    atoms.rattle(0.05, seed=1)
    s = from_atoms(atoms, dtype=jnp.float64)
    m = jnp.asarray(atoms.get_masses())
    v = jnp.asarray(np.random.default_rng(2).normal(size=(len(atoms), 3)) * 0.01)
    t0 = time.perf_counter()
    hardy = hf.hardy_flux(pot, s, v, m, skin=0.5)
    fu = hf.heat_flux(pot, m, "unfolded")
    st = fu.init(s)
    unf = fu.apply(s, v, st)
    dev = np.abs(np.asarray(unf.flux_potential - hardy.flux_potential)).max()
    scale = np.abs(np.asarray(hardy.flux_potential)).max()
    print(f"\n(check) periodic Nequix Si (2 atoms, {st[1].idx.shape[0]} replicas): "
          f"J_pot unfolded {np.asarray(unf.flux_potential)} vs Hardy {np.asarray(hardy.flux_potential)}; "
          f"max rel. deviation {dev / scale:.1e} ({time.perf_counter() - t0:.0f} s)")
    assert dev < 1e-8 * scale


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flux-model", choices=("lj", "nequix"), default="lj")
    p.add_argument("--fc3-model", choices=("morse", "nequix"), default="morse")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="Nequix .nqx")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256, 500, 864])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--x64", action="store_true")
    p.add_argument("--skip-flux", action="store_true")
    p.add_argument("--skip-fc3", action="store_true")
    p.add_argument("--check", action="store_true", help="also check periodic Nequix unfolded = Hardy")
    args = p.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if not args.skip_flux:
        bench_flux(args)
    if not args.skip_fc3:
        bench_fc3(args)
    if args.check:
        check_nequix_periodic(args)


if __name__ == "__main__":
    main()
