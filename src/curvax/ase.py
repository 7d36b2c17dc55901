"""ASE calculator over any curvax potential: energy, free_energy, energies, forces, stress, stresses."""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from curvax.calculator import compute as _compute
from curvax.system import from_atoms


class Calculator(_AseCalculator):
    """`atoms.calc = curvax.ase.Calculator(potential)`.

    Re-uses the compiled function while the number of atoms and the neighbour capacity
    allow; re-allocates automatically when the neighbour list overflows.
    Per-atom `stresses` (eV/Å³, Voigt) are computed only when asked for.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses"]

    def __init__(self, potential, capacity_multiplier: float = 1.25, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential
        self.capacity_multiplier = capacity_multiplier
        self._spec = None
        self._n = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        system = from_atoms(self.atoms)
        if self._n != len(self.atoms) or "numbers" in system_changes or "pbc" in system_changes:
            self._spec = None
        self._n = len(self.atoms)
        virials = "stresses" in properties
        res, self._spec = _compute(self.potential, system, stress=True, virials=virials,
                                   spec=self._spec, capacity_multiplier=self.capacity_multiplier)
        e = float(res["energy"])
        self.results = {"energy": e, "free_energy": e,
                        "energies": res["energies"].astype(np.float64),
                        "forces": res["forces"].astype(np.float64)}
        if "stress" in res:
            self.results["stress"] = res["stress"].astype(np.float64)
        if virials and "stresses" in res:
            self.results["stresses"] = res["stresses"].astype(np.float64)
