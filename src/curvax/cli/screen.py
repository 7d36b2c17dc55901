"""`curvax screen STRUCTURES --model M --out DIR`: harmonic phonons of a whole set of structures
in one command (see `curvax.phonons.screen`).

STRUCTURES is a pymatgen-JSON(.gz) list (e.g. ../shared/data/relax/alexandria-binary-pbe-phonon-
2025.1.json.gz, whose `heat_capacity` at 300 K is compared), an extxyz (or other ASE-readable)
file, a folder of POSCAR/CONTCAR/*.vasp/*.cif files, or a phonondb folder (manifest.csv +
.tar.lzma archives: each material's own DFT force constants are the reference, on its DFT
supercell; the MDR-style benchmark of ω_max, S, F, Cv at 300 K). Per structure: optional
relaxation (positions + cell), a supercell at least --supercell-min-length wide, FC2 by exact
HVPs, ν_min/ν_max, imaginary-mode flag, F/S/Cv at each temperature, model − DFT errors.

Writes to --out: results.csv (one row per structure, units in the column names, an `error`
column for structures that failed), summary.json (MAE vs DFT, throughput, compilations),
parity.png and errors.png (where references exist). A killed run resumes: finished structures
(results.jsonl) are not recomputed; other settings need --restart.
"""
from __future__ import annotations

from pathlib import Path

from curvax import precision
from curvax.cli.common import MODEL_HELP, add_command
from curvax.phonons.properties import DEFAULT_MESH
from curvax.validation import check_writable, positive_float, positive_int


def add_parser(subparsers):
    p = add_command(subparsers, "screen", __doc__, "phonons of a database of structures, resumable", run)
    p.add_argument("structures", help="pymatgen JSON(.gz) | extxyz | folder of POSCAR/CIF | phonondb folder")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--relax", action="store_true", help="relax positions and cell first (batched FIRE)")
    p.add_argument("--fmax", type=positive_float, default=5e-3, help="relaxation threshold [eV/Å]")
    p.add_argument("--relax-steps", type=positive_int, default=500, help="FIRE steps at most")
    p.add_argument("--supercell-min-length", type=positive_float, default=10.0,
                   help="every supercell width ≥ this [Å] (phonondb: the DFT supercell is used)")
    p.add_argument("--max-supercell-atoms", type=positive_int, default=256,
                   help="structures needing a larger supercell are error rows")
    p.add_argument("--temperature", type=positive_float, nargs="+", default=[300.0],
                   help="temperatures for F, S, Cv [K] (300 K always included: the DFT references)")
    p.add_argument("--mesh", type=positive_float, nargs="+", default=None,
                   help=f"q mesh: a length [Å] or 3 positive integers (default: {DEFAULT_MESH} Å)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="only the first N structures (phonondb: manifest order, smallest supercells first)")
    p.add_argument("--width", type=positive_int, default=8, help="HVPs per compiled call (memory ∝ width)")
    p.add_argument("--max-edges", type=positive_int, default=16384,
                   help="padded edges per HVP call at most (fewer HVPs per call for large supercells; "
                        "Nequix MP float32 needs ≈ 0.5 MB per edge)")
    p.add_argument("--group", type=positive_int, default=16,
                   help="structures relaxed and batched together (a kill loses at most one group)")
    p.add_argument("--restart", action="store_true", help="discard the results already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="screen_out", help="output directory")


def run(args) -> int:
    from curvax.cli.phonons import mesh_argument
    from curvax.phonons.screen import read_structures, screen
    from curvax.potentials import load_potential

    out = check_writable(args.out, "output folder --out")
    mesh = mesh_argument(args.mesh)
    entries = read_structures(args.structures, limit=args.limit, max_atoms=args.max_supercell_atoms)
    pot = load_potential(args.model, precision.dtype_for(args.x64))
    settings = {"structures": str(Path(args.structures).resolve()), "model": str(args.model),
                "x64": args.x64, "limit": args.limit}
    summary = screen(entries, pot, out, relax=args.relax, min_length=args.supercell_min_length,
                     temperatures=args.temperature, mesh=mesh, max_supercell_atoms=args.max_supercell_atoms,
                     fmax=args.fmax, relax_steps=args.relax_steps, width=args.width, max_edges=args.max_edges,
                     group=args.group,
                     settings=settings, restart=args.restart, progress=not args.no_progress)
    run_ = summary["this_run"]
    print(f"screened {summary['n_structures']} structures ({summary['n_ok']} ok, {summary['n_failed']} failed, "
          f"{summary['n_imaginary']} with imaginary modes); this run: {run_['structures']} in {run_['seconds']} s, "
          f"{run_['hvp_calls']} HVP calls, {run_['xla_compilations']} XLA compilations "
          f"({run_['xla_compilations_over_1s']} over 1 s, {run_['compile_seconds']} s in all), buckets {run_['buckets']}")
    for q, m in summary["mae_vs_dft"].items():
        print(f"  MAE {q:<16} {m['mae']:.4g} {m['unit']} (n = {m['n']})")
    for id_, msg in list(summary["failed"].items())[:10]:
        print(f"  failed {id_}: {msg}")
    print(f"wrote {out}/results.csv, summary.json" + (", parity.png, errors.png" if summary["mae_vs_dft"] else ""))
    return 0
