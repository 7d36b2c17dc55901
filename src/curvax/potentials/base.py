"""The potential contract shared by analytic references and machine-learned models."""
from __future__ import annotations

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


REMAT_EDGE_CHUNK = 128  # edges per rematerialised chunk (benchmarks/README.md: "Edge-chunked rematerialisation")


class Potential(eqx.Module):
    """Base class: an equinox Module (a pytree) whose floating leaves are its parameters.

    Subclasses set the static fields and implement `__call__`:

        __call__(r_ij (E,3) Å, numbers (N,) int, senders (E,), receivers (E,)) -> (N,) eV

    cutoff:          interaction cutoff of one message-passing step [Å]
    n_interactions:  number of message-passing steps (1 for pair potentials); the
                     effective interaction range is n_interactions × cutoff
    elements:        atomic numbers the potential knows (None: any)
    """

    cutoff: float = eqx.field(static=True)
    n_interactions: int = eqx.field(static=True, default=1)
    elements: tuple | None = eqx.field(static=True, default=None)

    def __call__(self, r_ij, numbers, senders, receivers):
        raise NotImplementedError

    def rematerialised(self, edge_chunk: int = REMAT_EDGE_CHUNK) -> "Potential":
        """A copy that works through its edges `edge_chunk` at a time and recomputes them in
        reverse passes instead of storing them (`jax.checkpoint`; 0: the plain potential), for
        memory-bound higher-order AD (grad_θ of an HVP); the same function. Pair potentials
        have nothing worth recomputing and return themselves."""
        return self

    def astype(self, dtype):
        """A copy with every floating-point parameter cast to `dtype` (e.g. jnp.float64 for FD tests)."""
        return cast_floats(self, dtype)


def cast_floats(tree, dtype):
    """`tree` with every floating-point array leaf cast to `dtype`."""
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def parameter_dtype(potential):
    """dtype of the potential's floating-point parameters (the default float if it has none)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(potential, eqx.is_inexact_array))
    return leaves[0].dtype if leaves else jnp.zeros(()).dtype


def check_species(potential: Potential, numbers, where: str = "structure") -> None:
    """Raise ValueError naming the elements `potential` does not know."""
    if potential.elements is None:
        return
    from ase.data import chemical_symbols

    unknown = sorted(set(int(z) for z in np.asarray(numbers)) - set(potential.elements))
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        raise ValueError(f"{where}: element(s) {names} unknown to the model "
                         f"{type(potential).__name__}")


class PairPotential(Potential):
    """A pair potential: E_i = ½ Σ_j φ(r_ij) [eV]; subclasses implement `pair_energy(r)`.

    On a full neighbour list (each pair twice, `half_list=False`) E_i = ½ Σ_{e: centre i} φ_e;
    on a half list (each pair once, `curvax.neighbors` `half=True`) each pair's φ is split
    between its two atoms, E_i = ½ (Σ_{e: centre i} φ_e + Σ_{e: neighbour i} φ_e): the same
    numbers from half the pairs. Which list a copy expects is its static `half_list`
    (`on_half_list`); the calculator and MD choose the half list for pair potentials
    (`curvax.calculator`), every other route keeps the full list.
    """

    half_list: bool = eqx.field(static=True, default=False)

    def pair_energy(self, r):
        """φ(r) [eV] for distances r [Å]."""
        raise NotImplementedError

    def __call__(self, r_ij, numbers, senders, receivers):
        phi = self.pair_energy(jnp.sqrt(jnp.sum(r_ij * r_ij, axis=-1)))
        n = numbers.shape[0]
        e = jax.ops.segment_sum(phi, receivers, num_segments=n)
        if self.half_list:
            e = e + jax.ops.segment_sum(phi, senders, num_segments=n)
        return 0.5 * e

    def on_half_list(self, half: bool = True) -> "PairPotential":
        """A copy evaluated on a half (True) or full (False) neighbour list; same parameters."""
        if bool(half) == self.half_list:
            return self
        out = copy.copy(self)
        object.__setattr__(out, "half_list", bool(half))
        return out


def safe_norm(r):
    """|r| with a finite gradient at r = 0."""
    r2 = jnp.sum(r * r, axis=-1)
    safe = jnp.where(r2 > 0, r2, 1.0)
    return jnp.where(r2 > 0, jnp.sqrt(safe), 0.0)
