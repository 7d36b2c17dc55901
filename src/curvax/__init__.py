"""curvax: exact derivatives of machine-learned interatomic potentials by automatic differentiation.

Public surface (one module per idea; see README for the map):
    System, from_atoms, to_atoms                 curvax.system
    Graph, neighbor_list                          curvax.neighbors
    LennardJones, Morse, load_nequix              curvax.potentials
    properties, energy                            curvax.derivatives
    calculator, compute                           curvax.calculator
    hvp, hessian                                  curvax.hessian
"""
import os as _os

import jax as _jax

if _os.environ.get("CURVAX_X64", "0") == "1":
    _jax.config.update("jax_enable_x64", True)

from curvax.system import System, from_atoms, to_atoms  # noqa: E402
from curvax.neighbors import Graph, NeighborSpec, neighbor_list  # noqa: E402
from curvax.potentials import LennardJones, Morse, NequixPotential, Potential, load_nequix  # noqa: E402
from curvax.derivatives import energy, properties  # noqa: E402
from curvax.calculator import Calculator, calculator, compute  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "System", "from_atoms", "to_atoms", "Graph", "NeighborSpec", "neighbor_list",
    "Potential", "LennardJones", "Morse", "NequixPotential", "load_nequix",
    "energy", "properties", "Calculator", "calculator", "compute",
]
