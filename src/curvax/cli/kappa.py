"""`curvax kappa STRUCTURE --model M`: lattice thermal conductivity (phono3py RTA) with exact
AD third-order force constants of an MLIP (see `curvax.phonons.fc3`).

STRUCTURE is a unit cell in any ASE-readable format (validated before the model is loaded), or
a `phono3py_disp.yaml` (its supercell, primitive matrix and displacement dataset are used).
Prints κ (W/m-K) and optionally writes JSON (--output, checked writable before the work).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from curvax import parallel, precision
from curvax.cli.common import MODEL_HELP, add_command, read_frames, supercell_matrix
from curvax.io import atomic_write
from curvax.phonons.convert import phono3py_from_atoms, phonopy_to_atoms
from curvax.phonons.fc3 import compute_fc3, kappa_rta
from curvax.potentials import check_species, load_potential
from curvax.validation import check_atoms, check_writable, positive_float, positive_int


def add_parser(subparsers):
    p = add_command(subparsers, "kappa", __doc__, "phono3py RTA thermal conductivity with AD FC3", run)
    p.add_argument("structure", help="unit cell file (ASE-readable) or phono3py_disp.yaml")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--supercell", type=int, nargs=3, default=None, metavar="N",
                   help="supercell for FC3 and FC2 (default: 2 2 2; not with a phono3py yaml)")
    p.add_argument("--primitive", default="auto", help="primitive matrix: auto|P|F|I|...")
    p.add_argument("--mesh", type=positive_int, nargs=3, default=[11, 11, 11], metavar="M",
                   help="q mesh for the RTA")
    p.add_argument("--temperatures", type=positive_float, nargs="+", default=[300.0], metavar="T",
                   help="temperatures [K]")
    p.add_argument("--chunk", type=positive_int, default=4, help="third-order products evaluated together")
    p.add_argument("--output", default=None, help="write results as JSON to this path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _phono3py_for(args):
    path = Path(args.structure)
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    if path.name.endswith(".yaml") and "phono3py" in path.name:
        import phono3py

        if args.supercell is not None:
            raise ValueError("--supercell conflicts with a phono3py yaml, which fixes the supercell")
        try:
            ph3 = phono3py.load(str(path), produce_fc=False, log_level=0)
        except Exception as e:  # noqa: BLE001  (phono3py raises yaml, key and attribute errors)
            raise ValueError(f"{path}: not a readable phono3py yaml ({type(e).__name__}: {e})") from None
        check_atoms(phonopy_to_atoms(ph3.unitcell), str(path))
        return ph3
    atoms = read_frames(path)[0]
    smat = supercell_matrix(args.supercell or [2, 2, 2])
    try:
        return phono3py_from_atoms(atoms, smat, primitive_matrix=args.primitive)
    except (RuntimeError, KeyError, ValueError) as e:  # unknown element, bad primitive matrix
        raise ValueError(f"{path}: phono3py cannot set up this crystal ({type(e).__name__}: {e})") from None


def run(args) -> int:
    from tqdm.auto import tqdm

    if args.output:
        check_writable(Path(args.output).parent, "--output folder")
    ph3 = _phono3py_for(args)
    pot = load_potential(args.model, precision.dtype_for(args.x64))
    check_species(pot, ph3.supercell.numbers, where=str(args.structure))
    t0 = time.perf_counter()
    with tqdm(desc="FC3 supercells", unit="supercell", disable=args.no_progress) as bar:
        res = compute_fc3(ph3, pot, chunk=args.chunk, progress=bar, mesh=parallel.data_mesh("all"))
    t_fc = time.perf_counter() - t0
    kappa = kappa_rta(ph3, temperatures=args.temperatures, mesh=args.mesh)
    t_k = time.perf_counter() - t0 - t_fc
    out = {"structure": str(args.structure), "model": str(args.model), "mesh": list(args.mesh),
           "temperatures": list(args.temperatures), "kappa_W_mK_voigt": np.asarray(kappa).tolist(),
           "n_supercell_atoms": int(len(ph3.supercell)), "n_third_order_products": res.n_third_order,
           "n_hvp_fc2": res.n_hvp, "time_fc_s": t_fc, "time_rta_s": t_k}
    for t, k in zip(args.temperatures, kappa):
        print(f"T = {t:7.1f} K   kappa (xx yy zz) = {k[0]:9.2f} {k[1]:9.2f} {k[2]:9.2f} W/m-K")
    print(f"FC3: {res.n_third_order} third-order products ({len(ph3.supercell)}-atom supercell) "
          f"in {t_fc:.1f} s; RTA {t_k:.1f} s")
    if args.output:
        atomic_write(args.output, json.dumps(out, indent=2))
    return 0
