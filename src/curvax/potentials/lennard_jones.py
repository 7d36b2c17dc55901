"""Lennard-Jones pair potential, written to reproduce `ase.calculators.lj.LennardJones`.

    φ(r) = 4ε [(σ/r)^12 − (σ/r)^6] − φ(r_c)               (smooth=False; energy shifted at r_c)
    φ(r) = 4ε [(σ/r)^12 − (σ/r)^6] · f(r²)                  (smooth=True)
    f(r²) = (r_c² − r²)² (r_c² + 2r² − 3r_o²) / (r_c² − r_o²)³  for r_o < r < r_c
    E_i = ½ Σ_j φ(r_ij)                  ε in eV, σ, r_c, r_o in Å.

Ref.: J. E. Lennard-Jones, Proc. R. Soc. A 106, 463 (1924); cutoff as in ASE.
"""
from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from curvax.potentials.base import PairPotential


class LennardJones(PairPotential):
    sigma: jnp.ndarray
    epsilon: jnp.ndarray
    r_inner: float = eqx.field(static=True)
    smooth: bool = eqx.field(static=True)

    def __init__(self, sigma=1.0, epsilon=1.0, cutoff=None, r_inner=None, smooth=False):
        self.sigma = jnp.asarray(sigma, dtype=jnp.zeros(()).dtype)
        self.epsilon = jnp.asarray(epsilon, dtype=jnp.zeros(()).dtype)
        self.cutoff = float(3.0 * float(sigma) if cutoff is None else cutoff)
        self.r_inner = float(0.66 * self.cutoff if r_inner is None else r_inner)
        self.smooth = bool(smooth)
        self.n_interactions = 1
        self.elements = None
        self.half_list = False

    def pair_energy(self, r):
        """φ(r) [eV] for distances r [Å]."""
        rc2, ro2 = self.cutoff ** 2, self.r_inner ** 2
        r2 = r * r
        inside = r2 < rc2
        c6 = jnp.where(inside, (self.sigma ** 2 / jnp.where(inside, r2, rc2)) ** 3, 0.0)
        phi = 4 * self.epsilon * (c6 * c6 - c6)
        if self.smooth:
            f = jnp.where(r2 < ro2, 1.0, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3)
            return jnp.where(inside, phi * f, 0.0)
        e0 = 4 * self.epsilon * ((self.sigma / self.cutoff) ** 12 - (self.sigma / self.cutoff) ** 6)
        return jnp.where(inside, phi - e0, 0.0)
