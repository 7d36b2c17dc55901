"""Phonons from exact derivatives: FC2 and FC3 in phonopy/phono3py layout, harmonic properties,
lattice thermal conductivity, DFT phonon data sets, plots.

Modules: `fc2` (force constants from HVPs on phonopy's displacements), `fc3` (third order by
jvp of the HVP; RTA κ via phono3py), `properties` (ν, F, S, Cv, DOS; model-vs-DFT comparison),
`plots` (bands + DOS), `data` (DFT sets: phonopy yaml/FORCE_SETS, POSCAR_<sg>, phonondb
archives), `convert` (ASE ↔ phonopy/phono3py), `screen` (phonons of many structures, `curvax screen`).
"""
from curvax.phonons.convert import atoms_to_phonopy, phono3py_from_atoms, phonopy_to_atoms
from curvax.phonons.data import load_phonopy_dataset
from curvax.phonons.fc2 import force_constants, force_constants_from_atoms
from curvax.phonons.fc3 import compute_fc3, kappa_rta
from curvax.phonons.properties import compare, phonon_properties

__all__ = ["force_constants", "force_constants_from_atoms", "compute_fc3", "kappa_rta", "phonon_properties",
           "compare", "load_phonopy_dataset", "atoms_to_phonopy", "phonopy_to_atoms", "phono3py_from_atoms"]
