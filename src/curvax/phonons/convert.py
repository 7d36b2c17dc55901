"""Conversions between curvax/ASE structures and phonopy/phono3py objects (units: Å, amu)."""
from __future__ import annotations

import numpy as np


def phonopy_to_atoms(cell):
    """`PhonopyAtoms` -> periodic `ase.Atoms` (same order, masses kept)."""
    from ase import Atoms

    return Atoms(symbols=list(cell.symbols), cell=np.asarray(cell.cell),
                 scaled_positions=np.asarray(cell.scaled_positions), masses=np.asarray(cell.masses),
                 pbc=True)


def atoms_to_phonopy(atoms):
    """`ase.Atoms` -> `PhonopyAtoms`."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell[:]),
                        scaled_positions=atoms.get_scaled_positions(wrap=False),
                        masses=atoms.get_masses())


def phono3py_from_atoms(atoms, supercell, primitive_matrix="auto", phonon_supercell=None,
                        symprec: float = 1e-5):
    """A `phono3py.Phono3py` for `atoms` (unit cell) with the given supercell (3 ints or 3×3)."""
    import phono3py
    from phonopy.structure.atoms import PhonopyAtoms

    def mat(s):
        if s is None:
            return None
        s = np.asarray(s, dtype=int)
        return np.diag(s) if s.shape == (3,) else s

    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell[:]),
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())
    return phono3py.Phono3py(unit, supercell_matrix=mat(supercell), primitive_matrix=primitive_matrix,
                             phonon_supercell_matrix=mat(phonon_supercell), symprec=symprec,
                             log_level=0)
