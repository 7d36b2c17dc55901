"""`curvax relax STRUCTURES --model M`: relax crystals (positions, optionally the cell) with the
differentiable FIRE / steepest-descent relaxers of `curvax.relax` (here without gradients).

STRUCTURES: any ASE-readable file(s) (all frames are read; periodic cells only). MODEL: a Nequix
.nqx path or registered name, `lj:sigma=...,epsilon=...,cutoff=...` (Lennard-Jones with a
smooth cutoff) or `morse:...` (`curvax.potentials.registry`).
Convergence as ASE: max |F_i| (and, with --cell, max row of |V σ|/N) below --fmax [eV/Å].
Writes the relaxed structures as extxyz (--out) with energy [eV], forces [eV/Å], stress and
info keys `fmax`, `n_steps`, `converged`, `source`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from curvax import precision
from curvax.io import atomic_write
from curvax.potentials import load_potential, parameter_dtype
from curvax.relax.driver import evaluate_batch, make_batch, relax_systems
from curvax.system import from_atoms


def add_parser(subparsers):
    p = subparsers.add_parser("relax", help="relax structures with an MLIP (FIRE / steepest descent)",
                              description=__doc__.splitlines()[0])
    p.add_argument("structures", nargs="+", help="structure files (ASE-readable; all frames)")
    p.add_argument("--model", required=True, help="model spec: Nequix .nqx path/name, lj:sigma=..,epsilon=..,cutoff=.. (smooth LJ), morse:...")
    p.add_argument("--cell", action="store_true", help="also relax the cell (strain DOF, target σ = 0)")
    p.add_argument("--steps", type=int, default=500, help="maximum relaxer steps (default 500)")
    p.add_argument("--fmax", type=float, default=0.05, help="force criterion [eV/Å] (default 0.05)")
    p.add_argument("--method", choices=("fire", "sd"), default="fire")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin [Å] (default 1.0)")
    p.add_argument("--chunk", type=int, default=100,
                   help="steps per compiled chunk; the neighbour list is rebuilt between chunks")
    p.add_argument("--out", default=None, help="output extxyz (default: <first input stem>-relaxed.extxyz)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def read_structures(paths):
    """All frames of all files as (label, ase.Atoms); clear errors for missing/unreadable/non-periodic."""
    import ase.io

    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"structure file not found: {path}")
        try:
            frames = ase.io.read(str(path), index=":")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: cannot read structures ({type(e).__name__}: {e})") from None
        if not frames:
            raise ValueError(f"{path}: no structures")
        for k, a in enumerate(frames):
            if not all(a.pbc) or a.cell.rank < 3:
                raise ValueError(f"{path} frame {k}: relaxation needs a periodic 3D cell (pbc={a.pbc.tolist()})")
            out.append((f"{path}@{k}" if len(frames) > 1 else str(path), a))
    return out


def run(args) -> int:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from tqdm.auto import tqdm

    if args.steps < 1 or args.fmax <= 0:
        raise ValueError(f"--steps must be ≥ 1 and --fmax > 0 (got {args.steps}, {args.fmax})")
    structures = read_structures(args.structures)
    pot = load_potential(args.model, precision.dtype_for(args.x64))
    systems = [from_atoms(a, dtype=parameter_dtype(pot)) for _, a in structures]
    bar = tqdm(total=len(systems), disable=args.no_progress, desc="relax", unit="structure")
    t0 = time.perf_counter()
    relaxed, info = relax_systems(pot, systems, cell=args.cell, steps=args.steps, fmax=args.fmax,
                                  method=args.method, skin=args.skin, chunk=args.chunk,
                                  progress=lambda k, i: bar.update(1))
    bar.close()
    wall = time.perf_counter() - t0
    n_pad = max(s.n_atoms for s in relaxed)
    final = evaluate_batch(pot, make_batch(relaxed, pot.cutoff, args.skin, n_atoms=n_pad))
    frames = []
    print(f"{'structure':40s} {'atoms':>5s} {'E [eV]':>14s} {'fmax':>9s} {'steps':>6s} {'V/V0':>8s}  conv")
    for k, ((label, a), s) in enumerate(zip(structures, relaxed)):
        b = a.copy()
        b.positions = np.asarray(s.positions, dtype=np.float64)
        b.set_cell(np.asarray(s.cell, dtype=np.float64))
        stress = np.asarray(final.stress[k], float)
        b.calc = SinglePointCalculator(b, energy=float(final.energy[k]),
                                       forces=np.asarray(final.forces[k, :len(b)], float),
                                       stress=stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
        b.info.update(fmax=float(info["fmax"][k]), n_steps=int(info["n_steps"][k]),
                      converged=bool(info["converged"][k]), source=label)
        frames.append(b)
        print(f"{label[-40:]:40s} {len(b):5d} {info['energy'][k]:14.6f} {info['fmax'][k]:9.2e} "
              f"{info['n_steps'][k]:6d} {b.get_volume() / a.get_volume():8.4f}  {bool(info['converged'][k])}")
    n_conv = int(np.sum(info["converged"]))
    print(f"{n_conv}/{len(frames)} converged to fmax {args.fmax} eV/Å in {wall:.1f} s")
    out = Path(args.out) if args.out else Path(Path(args.structures[0]).stem + "-relaxed.extxyz")
    atomic_write(out, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
    print(f"wrote {out}")
    return 0
