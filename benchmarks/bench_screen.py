"""Screening benchmark: `curvax screen` vs the plain phonopy + ASE-calculator loop, same crystals.

    .venv/bin/python benchmarks/bench_screen.py                  # first 8 Alexandria PBE binaries
    .venv/bin/python benchmarks/bench_screen.py --n 24 --min-length 8

Both routes start cold in one process (JAX's persistent compilation cache off) and compute, per
crystal, FC2 on the same supercell (every width ≥ --min-length Å, `supercell_for_length`) and
Cv at 300 K (compared with the file's DFT heat capacity):
  curvax   `curvax.phonons.screen.screen`: exact HVPs on phonopy's symmetry-reduced
           displacements, all probes of one shape bucket through one vmapped program
           (`--width` per call), so compilations grow with buckets, not crystals;
  loop     for each crystal: phonopy finite displacements (u = 0.01 Å, phonopy's default ±
           choice), one `nequix.calculator.NequixCalculator` (the model authors' ASE
           calculator, JAX backend, same .nqx) evaluating every displaced supercell.
Prints crystals per minute of each, their ratio (issue 14's target: ≥ 5), the number of XLA
compilations of each route, and the Cv MAE of both against DFT (the routes must agree).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CURVAX_SHARED", ROOT.parent / "shared"))
DEFAULT_MODEL = SHARED / "models" / "nequix-mp-1.nqx"
DEFAULT_DATA = SHARED / "data" / "relax" / "alexandria-binary-pbe-phonon-2025.1.json.gz"


def loop_route(entries, model_path, min_length, mesh):
    """phonopy + NequixCalculator, one crystal after the other. Returns (seconds, Cv list, calls)."""
    from nequix.calculator import NequixCalculator
    from phonopy import Phonopy

    from curvax.phonons.convert import atoms_to_phonopy, phonopy_to_atoms
    from curvax.phonons.properties import phonon_properties
    from curvax.phonons.screen import supercell_for_length

    t0 = time.time()
    calc = NequixCalculator(model_path=str(model_path), backend="jax", use_kernel=False)
    cvs, calls = [], 0
    for e in entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ph = Phonopy(atoms_to_phonopy(e.atoms), supercell_matrix=supercell_for_length(e.atoms.cell, min_length),
                         primitive_matrix=None, log_level=0)
            ph.generate_displacements(distance=0.01)
            forces = []
            for sc in ph.supercells_with_displacements:
                atoms = phonopy_to_atoms(sc)
                atoms.calc = calc
                forces.append(np.array(atoms.get_forces(), dtype=np.float64))
                calls += 1
            ph.forces = np.array(forces)
            ph.produce_force_constants()
            ph.symmetrize_force_constants()
            cvs.append(phonon_properties(ph, 300.0, mesh)["heat_capacity"])
        print(f"  loop: {e.id:>12} {len(forces):3d} force calls, {time.time() - t0:7.1f} s so far", flush=True)
    return time.time() - t0, cvs, calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=8, help="first N crystals of --data")
    p.add_argument("--min-length", type=float, default=10.0, help="supercell widths [Å]")
    p.add_argument("--width", type=int, default=8, help="HVPs per compiled call")
    p.add_argument("--max-edges", type=int, default=16384, help="padded edges per HVP call")
    p.add_argument("--mesh", type=float, default=50.0, help="q-mesh length [Å]")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from curvax.phonons.screen import compile_events, read_structures, screen
    from curvax.potentials import load_potential

    entries = read_structures(args.data, limit=args.n)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; {len(entries)} crystals "
          f"of {Path(args.data).name}, supercells ≥ {args.min_length} Å, float32 {Path(args.model).name}")
    t0 = time.time()
    pot = load_potential(args.model, dtype=jnp.float32)
    c0 = len(compile_events())
    with tempfile.TemporaryDirectory() as tmp:
        summary = screen(entries, pot, tmp, min_length=args.min_length, mesh=args.mesh, width=args.width,
                         max_edges=args.max_edges,
                         progress=False)
        import csv
        rows = {r["id"]: r for r in csv.DictReader(open(Path(tmp) / "results.csv"))}
    t_curvax = time.time() - t0
    n_curvax = len(compile_events()) - c0
    cv_curvax = [float(rows[e.id]["Cv_300K_J/K/mol"]) for e in entries]
    run = summary["this_run"]
    print(f"curvax screen: {t_curvax:.1f} s incl. model load, {run['hvp_calls']} HVP calls of width {args.width}, "
          f"{n_curvax} XLA compilations ({run['xla_compilations_over_1s']} over 1 s, {run['compile_seconds']} s), "
          f"buckets {run['buckets']}", flush=True)

    c0 = len(compile_events())
    t_loop, cv_loop, calls = loop_route(entries, args.model, args.min_length, args.mesh)
    n_loop = len(compile_events()) - c0
    dft = np.array([e.reference["heat_capacity"] for e in entries])
    print(f"phonopy + NequixCalculator loop: {t_loop:.1f} s, {calls} force calls, {n_loop} XLA compilations")
    rate_c, rate_l = 60 * len(entries) / t_curvax, 60 * len(entries) / t_loop
    print(f"\ncrystals/min: curvax {rate_c:.2f}, loop {rate_l:.2f}  → ratio {rate_c / rate_l:.2f} (target ≥ 5)")
    print(f"s/crystal:    curvax {t_curvax / len(entries):.1f}, loop {t_loop / len(entries):.1f}")
    print(f"Cv MAE vs DFT [J/K/mol]: curvax {np.mean(np.abs(np.array(cv_curvax) - dft)):.3f}, "
          f"loop {np.mean(np.abs(np.array(cv_loop) - dft)):.3f}; max |curvax − loop| "
          f"{np.max(np.abs(np.array(cv_curvax) - np.array(cv_loop))):.2e}")


if __name__ == "__main__":
    main()
