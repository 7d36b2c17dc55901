"""The atomic structure: a small immutable pytree, convertible from/to `ase.Atoms`.

Units: positions and cell in Å; `cell` rows are the lattice vectors (ASE convention).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class System(NamedTuple):
    """One structure.

    positions: (N, 3) Cartesian positions [Å]
    cell:      (3, 3) lattice vectors as rows [Å] (zeros for a molecule)
    numbers:   (N,) atomic numbers
    pbc:       (3,) periodic directions (static: a Python tuple of bools)
    """

    positions: jnp.ndarray
    cell: jnp.ndarray
    numbers: jnp.ndarray
    pbc: tuple = (True, True, True)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def volume(self):
        """|det(cell)| [Å³]."""
        return jnp.abs(jnp.linalg.det(self.cell))


def from_atoms(atoms, dtype=None) -> System:
    """`ase.Atoms` -> `System` (float32 unless jax x64 is enabled or `dtype` is given)."""
    dtype = dtype or jax.dtypes.canonicalize_dtype(jnp.float64)
    pbc = tuple(bool(p) for p in atoms.pbc)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if any(pbc) and abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError(
            f"structure {atoms.get_chemical_formula()} has pbc={list(pbc)} but a degenerate cell "
            f"(volume {abs(np.linalg.det(cell)):.3g} Å³); give it a full 3D cell or set pbc=False"
        )
    # device_put, not jnp.asarray: the latter compiles a small program per new shape (≈ 10–20 ms)
    return System(
        positions=jax.device_put(np.asarray(atoms.positions, dtype=dtype)),
        cell=jax.device_put(np.asarray(cell, dtype=dtype)),
        numbers=jax.device_put(np.asarray(atoms.numbers, dtype=np.int32)),
        pbc=pbc,
    )


def to_atoms(system: System):
    """`System` -> `ase.Atoms`."""
    from ase import Atoms

    return Atoms(
        numbers=np.asarray(system.numbers),
        positions=np.asarray(system.positions, dtype=np.float64),
        cell=np.asarray(system.cell, dtype=np.float64),
        pbc=system.pbc,
    )
