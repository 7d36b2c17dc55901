"""`curvax phonons STRUCTURE --model M`: harmonic phonons of an MLIP with exact AD force
constants (see `curvax.phonons.fc2`), optionally after relaxation and compared with DFT.

STRUCTURE is a unit cell in any ASE-readable format or a phonopy yaml (its unit cell, supercell
and primitive matrices are used); it is validated before the model is loaded. With
--compare-dft (a DFT set: directory, phonopy_disp.yaml [FORCE_SETS], params yaml or
POSCAR_<sg>) the DFT supercell and primitive matrices are used for the model too (MDR
benchmark protocol), so --supercell cannot be given with it. Writes to --out:
phonopy_model.yaml (with force constants), properties.txt and properties.json (max frequency,
F, S, Cv at T; model − DFT errors), bands_dos.png (model vs DFT overlaid).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from curvax import parallel, precision
from curvax.cli.common import MODEL_HELP, add_command, read_frames, supercell_matrix
from curvax.io import atomic_write
from curvax.phonons.convert import atoms_to_phonopy, phonopy_to_atoms
from curvax.phonons.data import load_phonopy_dataset
from curvax.phonons.fc2 import force_constants
from curvax.phonons.plots import plot_bands_dos
from curvax.phonons.properties import DEFAULT_MESH, compare, phonon_properties, write_properties
from curvax.potentials import check_species, load_potential
from curvax.relax.ase import relax_atoms
from curvax.validation import check_atoms, check_writable, positive_float, positive_int


def add_parser(subparsers):
    p = add_command(subparsers, "phonons", __doc__, "harmonic phonons with AD force constants", run)
    p.add_argument("structure", help="unit cell (ASE-readable) or phonopy yaml")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--supercell", type=int, nargs="+", default=None, metavar="N",
                   help="3 or 9 integers (default: from the phonopy yaml, else 2 2 2)")
    p.add_argument("--primitive", default=None, help="primitive matrix: auto|P|F|I|... (default: auto)")
    p.add_argument("--relax", action="store_true", help="relax positions and cell first (ASE FIRE)")
    p.add_argument("--fmax", type=positive_float, default=1e-3, help="relaxation threshold [eV/Å]")
    p.add_argument("--compare-dft", nargs="+", default=None, metavar="PATH",
                   help="DFT set: DIR | phonopy_disp.yaml [FORCE_SETS] | params yaml | POSCAR_<sg>")
    p.add_argument("--mesh", type=positive_float, nargs="+", default=None,
                   help=f"q mesh: a length [Å] or 3 positive integers (default: {DEFAULT_MESH} Å)")
    p.add_argument("--temperature", type=positive_float, default=300.0, help="T for F, S, Cv [K]")
    p.add_argument("--chunk", type=positive_int, default=16, help="HVPs evaluated together (memory ∝ chunk)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="phonons_out", help="output directory")


def mesh_argument(values):
    """--mesh: one length [Å] or three positive integers (phonopy's sampling mesh)."""
    if values is None:
        return DEFAULT_MESH
    if len(values) == 1:
        return float(values[0])
    if len(values) == 3 and all(float(v).is_integer() for v in values):
        return [int(v) for v in values]
    raise ValueError(f"--mesh takes a length [Å] or 3 positive integers, got {values}")


def _load_dft(paths):
    """The DFT set of --compare-dft: one path (`load_phonopy_dataset`) or a displacement yaml and
    its forces file."""
    if len(paths) > 2:
        raise ValueError("--compare-dft takes one path or phonopy_disp.yaml FORCE_SETS")
    return load_phonopy_dataset(paths[0], force_sets=paths[1] if len(paths) == 2 else None)


def _read_structure(path: Path):
    """(ase.Atoms unit cell, supercell matrix or None, primitive matrix or None), validated."""
    if not path.exists():
        raise FileNotFoundError(f"structure file not found: {path}")
    if path.name.endswith((".yaml", ".yaml.xz")) and "phonopy" in path.name:
        import phonopy

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ph = phonopy.load(str(path), produce_fc=False, log_level=0)
        except Exception as e:  # noqa: BLE001  (phonopy raises yaml, key and attribute errors)
            raise ValueError(f"{path}: not a readable phonopy yaml ({type(e).__name__}: {e})") from None
        atoms = phonopy_to_atoms(ph.unitcell)
        check_atoms(atoms, str(path))
        return atoms, ph.supercell_matrix, ph.primitive_matrix
    return read_frames(path)[0], None, None


def run(args) -> int:
    from phonopy import Phonopy
    from tqdm.auto import tqdm

    if args.supercell is not None and args.compare_dft:
        raise ValueError("--supercell conflicts with --compare-dft: the model is compared on the DFT set's "
                         "supercell; drop --supercell")
    mesh = mesh_argument(args.mesh)
    atoms, smat, pmat = _read_structure(Path(args.structure))
    dft = _load_dft(args.compare_dft) if args.compare_dft else None
    if dft is not None:
        smat, pmat = dft.supercell_matrix, dft.primitive_matrix
    if args.supercell is not None:
        smat = supercell_matrix(args.supercell)
    if smat is None:
        smat = np.diag([2, 2, 2])
    if args.primitive is not None:
        pmat = args.primitive
    out = check_writable(args.out, "output folder --out")   # after the inputs: bad input creates nothing

    pot = load_potential(args.model, precision.dtype_for(args.x64))
    check_species(pot, atoms.numbers, where=str(args.structure))
    t0 = time.perf_counter()
    if args.relax:
        atoms = relax_atoms(atoms, pot, fmax=args.fmax)
        print(f"relaxed in {time.perf_counter() - t0:.1f} s: cell lengths {np.round(atoms.cell.lengths(), 4).tolist()} Å")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*primitive_matrix defaulted.*")
        phonon = Phonopy(atoms_to_phonopy(atoms), supercell_matrix=smat,
                         primitive_matrix="auto" if pmat is None else pmat, log_level=0)
    t1 = time.perf_counter()
    with tqdm(desc="FC2 HVPs", unit="HVP", disable=args.no_progress) as bar:
        try:
            res = force_constants(phonon, pot, chunk=args.chunk, progress=bar, mesh=parallel.data_mesh("all"))
        except ValueError as e:  # non-finite force constants
            raise ValueError(f"{args.structure}: {e}") from None
    print(f"FC2 by AD: {res.n_atoms}-atom supercell, {res.n_hvp} HVPs, {time.perf_counter() - t1:.1f} s")

    atomic_write(out / "phonopy_model.yaml", lambda tmp: phonon.save(tmp, settings={"force_constants": True}))
    props = {"model": phonon_properties(phonon, args.temperature, mesh)}
    errors = None
    if dft is not None:
        props["dft"] = phonon_properties(dft, args.temperature, mesh)
        errors = compare(props["model"], props["dft"])
    write_properties(props, errors, out)
    print((out / "properties.txt").read_text(), end="")
    if not args.no_plot:
        phonons = {"model": phonon} if dft is None else {"DFT": dft, "model": phonon}
        title = f"{atoms.get_chemical_formula(mode='metal', empirical=True)}: {Path(str(args.model)).name}"
        plot_bands_dos(phonons, out / "bands_dos.png", mesh=mesh, title=title)
    print(f"wrote {out}/phonopy_model.yaml, properties.txt, properties.json"
          + ("" if args.no_plot else ", bands_dos.png"))
    return 0
