"""Morse pair potential with the smooth quintic cutoff of `ase.calculators.morse.MorsePotential`.

    φ(r) = ε [exp(−2ρ₀(r/r₀ − 1)) − 2 exp(−ρ₀(r/r₀ − 1))] · f_cut(r)
    f_cut: 1 below r₁ = rcut1·r₀, 0 above r₂ = rcut2·r₀, 6s⁵ − 15s⁴ + 10s³ between,
           s = 1 − (r − r₁)/(r₂ − r₁).          E_i = ½ Σ_j φ(r_ij).   ε in eV, r₀ in Å.

Ref.: P. M. Morse, Phys. Rev. 34, 57 (1929). Harmonic constant at the minimum k = 2ε(ρ₀/r₀)².
"""
from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from curvax.potentials.base import PairPotential


class Morse(PairPotential):
    epsilon: jnp.ndarray
    r0: jnp.ndarray
    rho0: jnp.ndarray
    r_inner: float = eqx.field(static=True)

    def __init__(self, epsilon=1.0, r0=1.0, rho0=6.0, rcut1=1.9, rcut2=2.7):
        dtype = jnp.zeros(()).dtype
        self.epsilon = jnp.asarray(epsilon, dtype=dtype)
        self.r0 = jnp.asarray(r0, dtype=dtype)
        self.rho0 = jnp.asarray(rho0, dtype=dtype)
        self.r_inner = float(rcut1 * r0)
        self.cutoff = float(rcut2 * r0)
        self.n_interactions = 1
        self.elements = None
        self.half_list = False

    def pair_energy(self, r):
        """φ(r) [eV] for distances r [Å]."""
        expf = jnp.exp(self.rho0 * (1.0 - r / self.r0))
        s = jnp.clip(1.0 - (r - self.r_inner) / (self.cutoff - self.r_inner), 0.0, 1.0)
        fcut = 6 * s ** 5 - 15 * s ** 4 + 10 * s ** 3
        return self.epsilon * expf * (expf - 2.0) * fcut
