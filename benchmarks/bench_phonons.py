"""Phonon benchmark: exact FC2 by Hessian-vector products vs phonopy finite displacements.

    .venv/bin/python benchmarks/bench_phonons.py                    # Si 2×2×2 (64 at.) + P-4 (48 at.)
    .venv/bin/python benchmarks/bench_phonons.py --lowsym Pc        # 128-atom monoclinic (slower)
    .venv/bin/python benchmarks/bench_phonons.py --cases si         # one case only

For each crystal (Nequix MP, float32 as shipped, jit, times are medians of `--repeat` warm calls):
  (a) one force call      F = −∂E/∂x at a fixed graph (eqx.filter_jit of the gradient)
  (b) one HVP             H·v = jvp(∇E)(x; v)  (forward-over-reverse, `curvax.hessian.hvp`)
  (c) FC2 by AD           `curvax.phonons.fc2.force_constants`: phonopy's symmetry-reduced
                          displacements (K of them) → K HVPs in one linearisation → phonopy
                          symmetrisation + ASR. Warm (jit cached) and cold (incl. compilation).
  (d) FC2 by FD           phonopy finite displacements (u = 0.01 Å, phonopy's default ± choice)
                          with `curvax.ase.Calculator` (forces + stress per call, as a user runs
                          it; jit warmed on the perfect supercell), and (d') the same count of
                          lean jitted force-only calls (n_FD × (a)) — the FD floor.
Prints (b)/(a) (target ≤ 2.5) and (c)/(d), (c)/(d') (target ≤ 1; ≤ 0.2 for low symmetry), and
the number of model evaluations of each route.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_MODEL = SHARED / "models" / "nequix-mp-1.nqx"
SPACEGROUPS = SHARED / "data" / "phonons" / "spacegroups"


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def si_phonon():
    from ase.build import bulk
    from phonopy import Phonopy

    from curvax.phonons.convert import atoms_to_phonopy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Phonopy(atoms_to_phonopy(bulk("Si", "diamond", a=5.431, cubic=True)),
                       supercell_matrix=np.diag([2, 2, 2]), primitive_matrix="F", log_level=0)


def spacegroup_phonon(sg):
    """Unit cell and (inferred) supercell matrix of phonopy's test crystal `sg`; fresh Phonopy."""
    from phonopy import Phonopy

    from curvax.phonons.data import load_phonopy_dataset

    dft = load_phonopy_dataset(SPACEGROUPS / f"POSCAR_{sg}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Phonopy(dft.unitcell, supercell_matrix=dft.supercell_matrix,
                       primitive_matrix=dft.primitive_matrix, log_level=0)


@eqx.filter_jit
def _forces(potential, system, graph):
    from curvax.derivatives import position_energy_fn

    return -jax.grad(position_energy_fn(potential, system, graph))(system.positions)


@eqx.filter_jit
def _hvp(potential, system, graph, v):
    from curvax.hessian import hvp

    return hvp(potential, system, graph, v)


def bench_case(name, phonon, pot, repeat):
    from curvax.ase import Calculator
    from curvax.phonons.fc2 import _supercell_system, finite_displacement_force_constants, force_constants
    from curvax.phonons.convert import phonopy_to_atoms

    system, graph = _supercell_system(phonon, pot)
    n = system.positions.shape[0]
    n_edges = int(graph.n_edges)
    v = jnp.asarray(np.random.default_rng(0).normal(size=(n, 3)), system.positions.dtype)
    jax.block_until_ready(_forces(pot, system, graph))
    jax.block_until_ready(_hvp(pot, system, graph, v))
    t_force = median_time(lambda: _forces(pot, system, graph), repeat)
    t_hvp = median_time(lambda: _hvp(pot, system, graph, v), repeat)

    t0 = time.perf_counter()
    res = force_constants(phonon, pot, assign=False)             # cold: compiles the K-column map
    t_ad_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = force_constants(phonon, pot, assign=False)             # warm
    t_ad = time.perf_counter() - t0

    calc = Calculator(pot)
    warm = phonopy_to_atoms(phonon.supercell)
    warm.calc = calc
    warm.get_forces()                                            # compile once
    t0 = time.perf_counter()
    fc_fd, n_fd = finite_displacement_force_constants(phonon, calc, distance=0.01, is_plusminus="auto")
    t_fd = time.perf_counter() - t0
    t_fd_floor = n_fd * t_force

    err = np.abs(res.force_constants - fc_fd).max() / np.abs(fc_fd).max()
    print(f"\n== {name}: {n} atoms, {n_edges} edges, {len(phonon.symmetry.symmetry_operations['rotations'])} "
          f"symmetry operations ({phonon.symmetry.dataset.international})")
    print(f"(a) force call              {t_force * 1e3:10.1f} ms")
    print(f"(b) HVP                     {t_hvp * 1e3:10.1f} ms    (b)/(a) = {t_hvp / t_force:5.2f}  (target ≤ 2.5)")
    print(f"(c) FC2 by AD, warm         {t_ad:10.2f} s     {res.n_hvp} HVPs in one linearisation")
    print(f"    FC2 by AD, cold         {t_ad_cold:10.2f} s     (incl. jit compilation)")
    print(f"(d) FC2 by FD (ASE calc)    {t_fd:10.2f} s     {n_fd} force(+stress) calls")
    print(f"(d') n_FD × (a)             {t_fd_floor:10.2f} s")
    print(f"(c)/(d)  = {t_ad / t_fd:5.3f}   (c)/(d') = {t_ad / t_fd_floor:5.3f}   "
          f"(target ≤ 1; ≤ 0.2 for low symmetry)    max|Φ_AD − Φ_FD|/max|Φ| = {err:.1e}")
    return dict(name=name, n=n, force=t_force, hvp=t_hvp, ad=t_ad, ad_cold=t_ad_cold, fd=t_fd,
                fd_floor=t_fd_floor, n_hvp=res.n_hvp, n_fd=n_fd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--lowsym", default="P-4", help="space-group crystal from spacegroups/ (P-4: 48 "
                   "atoms, 38 displacements; Pc: 128 atoms, 48)")
    p.add_argument("--cases", nargs="+", default=["si", "lowsym"], choices=["si", "lowsym"])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    from curvax.potentials import load_potential

    pot = load_potential(args.model, dtype=jnp.float32)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32 Nequix MP ({args.model})")
    rows = []
    if "si" in args.cases:
        rows.append(bench_case("Si diamond 2×2×2 conventional", si_phonon(), pot, args.repeat))
    if "lowsym" in args.cases:
        rows.append(bench_case(f"{args.lowsym} (spacegroups)", spacegroup_phonon(args.lowsym), pot,
                               args.repeat))
    print("\ncase                                  N  (b)/(a)  K_AD  n_FD  (c)/(d)  (c)/(d')")
    for r in rows:
        print(f"{r['name']:<36}{r['n']:>4}{r['hvp'] / r['force']:>9.2f}{r['n_hvp']:>6}{r['n_fd']:>6}"
              f"{r['ad'] / r['fd']:>9.3f}{r['ad'] / r['fd_floor']:>10.3f}")


if __name__ == "__main__":
    main()
