"""`curvax kappa STRUCTURE --model M`: lattice thermal conductivity (phono3py RTA) with exact
AD third-order force constants of an MLIP (see `curvax.phonons.fc3`).

STRUCTURE is a unit cell in any ASE-readable format, or a `phono3py_disp.yaml` (its supercell,
primitive matrix and displacement dataset are used). Prints κ (W/m-K) and optionally writes JSON.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from curvax import precision
from curvax.io import atomic_write
from curvax.phonons.convert import phono3py_from_atoms
from curvax.phonons.fc3 import compute_fc3, kappa_rta
from curvax.potentials import load_potential


def add_parser(subparsers):
    p = subparsers.add_parser("kappa", help="phono3py RTA thermal conductivity with AD FC3",
                              description=__doc__.splitlines()[0])
    p.add_argument("structure", help="unit cell file (ASE-readable) or phono3py_disp.yaml")
    p.add_argument("--model", required=True, help="model spec: Nequix .nqx path or name, lj:..., morse:...")
    p.add_argument("--supercell", type=int, nargs=3, default=None, metavar="N",
                   help="supercell for FC3 (and FC2) (default 2 2 2; ignored for phono3py yaml)")
    p.add_argument("--primitive", default="auto", help="primitive matrix: auto|P|F|I|... (default auto)")
    p.add_argument("--mesh", type=int, nargs=3, default=[11, 11, 11], metavar="M")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0], metavar="T")
    p.add_argument("--chunk", type=int, default=4, help="third-order products evaluated together")
    p.add_argument("--output", default=None, help="write results as JSON to this path")
    p.set_defaults(func=run)


def _phono3py_for(args):
    path = Path(args.structure)
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    if path.name.endswith(".yaml") and "phono3py" in path.name:
        import phono3py

        return phono3py.load(str(path), produce_fc=False, log_level=0)
    import ase.io

    try:
        atoms = ase.io.read(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read structure ({type(e).__name__}: {e})") from e
    return phono3py_from_atoms(atoms, args.supercell or [2, 2, 2], primitive_matrix=args.primitive)


def run(args) -> int:
    pot = load_potential(args.model, precision.dtype_for(args.x64))
    ph3 = _phono3py_for(args)
    t0 = time.perf_counter()
    res = compute_fc3(ph3, pot, chunk=args.chunk)
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
