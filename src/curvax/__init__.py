"""curvax: exact derivatives of machine-learned interatomic potentials by automatic differentiation,
and fine-tuning of those potentials on their derivatives.

One entry point per feature (the rest lives in the subpackages; README "Where things are"):

    load_potential(spec)                 .nqx path/name, lj:..., morse:...    curvax.potentials
    System, from_atoms, to_atoms         structures (Å)                       curvax.system
    calculator(pot) -> (init, apply)     energy, forces, stress, virials      curvax.calculator
    compute(pot, system)                 the same, one call, numpy results     curvax.calculator
    ase.Calculator(pot)                  the ASE calculator (E, F, σ, virials) curvax.ase
    hvp(pot, system, graph, v)           Hessian-vector products (`hessian`)  curvax.hessian
    force_constants(phonon, pot)         FC2 in phonopy layout                curvax.phonons.fc2
    compute_fc3(ph3, pot), kappa_rta     FC3 in phono3py layout, RTA κ        curvax.phonons.fc3
    phonon_properties(phonon)            ν, F, S, Cv via phonopy              curvax.phonons.properties
    heat_flux(pot, masses)               exact heat flux (init, apply)        curvax.thermal.heat_flux
    dynamics, simulate, green_kubo       MD with the heat flux; Green–Kubo    curvax.thermal
    curvax.relax.relax(pot, batch, ...)  differentiable relaxation, adjoints  curvax.relax
    enable_x64()                         the precision policy                 curvax.precision
Fine-tuning (PFT, relaxation fine-tuning): `curvax.finetune` (configs + `run`), `curvax` CLI.
Submodules keep their names (`curvax.hessian`, `curvax.relax`, `curvax.thermal.heat_flux`):
no function exported here shadows one. Importing curvax changes no JAX setting.
"""
from curvax import ase  # curvax.ase.Calculator: the ASE calculator
from curvax.calculator import CalculatorFns, calculator, compute
from curvax.derivatives import energy, properties
from curvax.hessian import hvp
from curvax.neighbors import Graph, NeighborSpec, neighbor_list
from curvax.phonons import compute_fc3, force_constants, kappa_rta, phonon_properties
from curvax.potentials import LennardJones, Morse, NequixPotential, Potential, load_potential, save_potential
from curvax.precision import enable_x64
from curvax.protocol import InitApply
from curvax.relax import Checkpointed, Implicit, Unrolled
from curvax.system import System, from_atoms, to_atoms
from curvax.thermal.green_kubo import green_kubo
from curvax.thermal.heat_flux import heat_flux
from curvax.thermal.md import dynamics, simulate

__version__ = "0.1.0"

__all__ = [
    "ase", "System", "from_atoms", "to_atoms", "Graph", "NeighborSpec", "neighbor_list", "InitApply",
    "Potential", "LennardJones", "Morse", "NequixPotential", "load_potential", "save_potential",
    "energy", "properties", "CalculatorFns", "calculator", "compute", "hvp",
    "force_constants", "compute_fc3", "kappa_rta", "phonon_properties",
    "heat_flux", "dynamics", "simulate", "green_kubo",
    "Unrolled", "Checkpointed", "Implicit", "enable_x64",
]
