"""`curvax relax STRUCTURES --model M`: relax crystals (positions, optionally the cell) with the
differentiable FIRE / steepest-descent relaxers of `curvax.relax` (here without gradients).

STRUCTURES: any ASE-readable file(s) (all frames are read; periodic cells only), validated
before the model is loaded (finite positions, no overlapping atoms). MODEL: any
`curvax.load_potential` spec (a Nequix .nqx path or name; `lj:sigma=..,epsilon=..,cutoff=..`
is a Lennard-Jones potential with a *smooth* cutoff; `morse:...`).
Convergence as ASE: max |F_i| (and, with --cell, max row of |V σ|/N) below --fmax [eV/Å].
Writes the relaxed structures as extxyz (--out; an existing file only with --overwrite) with
energy [eV], forces [eV/Å], stress and info keys `fmax`, `n_steps`, `converged`, `source`, and
`error` for a structure whose energy or forces turned NaN/inf (the others are still written;
the exit code is then 1).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from curvax import precision
from curvax.cli.common import MODEL_HELP, add_command, read_frames
from curvax.io import atomic_write
from curvax.potentials import load_potential, parameter_dtype
from curvax.relax.driver import evaluate_batch, make_batch, relax_systems
from curvax.system import from_atoms
from curvax.validation import check_writable, nonnegative_float, positive_float, positive_int


def add_parser(subparsers):
    p = add_command(subparsers, "relax", __doc__, "relax structures with an MLIP (FIRE / steepest descent)", run)
    p.add_argument("structures", nargs="+", help="structure files (ASE-readable; all frames)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--cell", action="store_true", help="also relax the cell (strain DOF, target σ = 0)")
    p.add_argument("--steps", type=positive_int, default=500, help="maximum relaxer steps per structure")
    p.add_argument("--fmax", type=positive_float, default=0.05, help="force criterion [eV/Å]")
    p.add_argument("--method", choices=("fire", "sd"), default="fire",
                   help="FIRE (ASE's variant) or fixed-step steepest descent")
    p.add_argument("--skin", type=nonnegative_float, default=1.0,
                   help="neighbour-list skin [Å]: the list holds pairs within cutoff + skin")
    p.add_argument("--chunk", type=positive_int, default=100,
                   help="steps per compiled chunk; the neighbour list is rebuilt between chunks")
    p.add_argument("--out", default=None, help="output extxyz (default: <first input stem>-relaxed.extxyz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from tqdm.auto import tqdm

    structures = [(f"{path}@{k}" if len(frames) > 1 else str(path), a)
                  for path in args.structures for frames in [read_frames(path)] for k, a in enumerate(frames)]
    out = Path(args.out) if args.out else Path(Path(args.structures[0]).stem + "-relaxed.extxyz")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    check_writable(out.parent, "output folder")
    pot = load_potential(args.model, precision.dtype_for(args.x64))
    systems = [from_atoms(a, dtype=parameter_dtype(pot)) for _, a in structures]
    bar = tqdm(total=len(systems) * args.steps, disable=args.no_progress, desc="relax", unit="step")
    t0 = time.perf_counter()
    relaxed, info = relax_systems(pot, systems, cell=args.cell, steps=args.steps, fmax=args.fmax,
                                  method=args.method, skin=args.skin, chunk=args.chunk, progress=bar.update)
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
        if info["error"][k]:
            b.info["error"] = str(info["error"][k])
        frames.append(b)
        print(f"{label[-40:]:40s} {len(b):5d} {info['energy'][k]:14.6f} {info['fmax'][k]:9.2e} "
              f"{info['n_steps'][k]:6d} {b.get_volume() / a.get_volume():8.4f}  {bool(info['converged'][k])}"
              + (f"  FAILED: {info['error'][k]}" if info["error"][k] else ""))
    n_conv = int(np.sum(info["converged"]))
    print(f"{n_conv}/{len(frames)} converged to fmax {args.fmax} eV/Å in {wall:.1f} s")
    atomic_write(out, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
    print(f"wrote {out}")
    failed = [label for (label, _), e in zip(structures, info["error"]) if e]
    if failed:
        print(f"curvax relax: {len(failed)} structure(s) failed (energy or forces NaN/inf): {failed}")
        return 1
    return 0
