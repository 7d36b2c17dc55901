"""Potentials: pytrees mapping bond vectors to per-atom energies.

The contract (see `curvax.potentials.base.Potential`):

    potential(r_ij, numbers, senders, receivers) -> per-atom energies E_i, shape (N,) [eV]

with r_ij = x_j - x_i + S·cell (Å) for every edge (centre i = receivers, neighbour j = senders).
Energies must go smoothly (or at least continuously) to zero at `potential.cutoff`.
Load any of them with `load_potential(spec)` (`registry.py`: `.nqx` paths and names, `lj:`, `morse:`).
"""
from curvax.potentials.base import PairPotential, Potential, check_species, parameter_dtype
from curvax.potentials.lennard_jones import LennardJones
from curvax.potentials.morse import Morse
from curvax.potentials.nequix import NequixPotential
from curvax.potentials.registry import load_potential, resolve_model_path, save_potential

__all__ = ["Potential", "PairPotential", "check_species", "parameter_dtype", "LennardJones", "Morse", "NequixPotential",
           "load_potential", "resolve_model_path", "save_potential"]
