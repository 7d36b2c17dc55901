"""Fixed-shape batches of structures of different sizes (padding, so nothing recompiles).

Each structure is padded to `n_atoms` atoms and `n_edges` edges: padded atoms get no
edges (their energies are masked out), padded edges have `mask=False` (bond of 1000 Å).
A batch is a `Batch` of arrays with a leading structure axis, evaluated with `jax.vmap`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvax import neighbors
from curvax.neighbors import Graph
from curvax.system import System, to_atoms


class Structure(NamedTuple):
    """One padded structure with optional labels (NaN where absent)."""

    system: System
    graph: Graph
    node_mask: np.ndarray  # (n_atoms,) True for real atoms
    energy: np.ndarray  # () eV
    forces: np.ndarray  # (n_atoms, 3) eV/Å
    stress: np.ndarray  # (6,) eV/Å³, Voigt, ASE sign

    @property
    def n_atoms(self):
        """Number of real atoms (per structure, with a leading batch axis)."""
        return jnp.sum(self.node_mask, axis=-1)


Batch = Structure  # same fields with a leading batch axis


def graph_of(system: System, cutoff: float, where: str = "structure") -> Graph:
    """Host-side neighbour graph, sized exactly (no overflow possible), same edges as
    `neighbors.allocate` (pairs with |r_ij| < cutoff). Periodic cells use matscipy's C
    neighbour list ("ijS": the convention of `neighbors`), which compiles nothing, so building
    the graphs of many structures of different shapes is fast; molecules use `allocate`."""
    pbc = tuple(bool(p) for p in system.pbc)
    if all(pbc):
        neighbors.check_system(system)
        from matscipy.neighbours import neighbour_list

        i, j, d, shifts = neighbour_list("ijdS", to_atoms(system), float(cutoff))
        keep = d < cutoff
        i, j, shifts = i[keep], j[keep], shifts[keep]
        n = max(len(i), 1)
        pad = n - len(i)
        return Graph(senders=np.concatenate([j, np.zeros(pad, int)]).astype(np.int32),
                     receivers=np.concatenate([i, np.zeros(pad, int)]).astype(np.int32),
                     shifts=np.concatenate([shifts, np.zeros((pad, 3))]).astype(np.asarray(system.positions).dtype),
                     mask=np.arange(n) < len(i), overflow=np.array(False))
    _, graph = neighbors.allocate(system, cutoff, capacity_multiplier=1.0, min_capacity=1)
    if bool(graph.overflow):
        raise ValueError(f"{where}: neighbour list overflow while building the graph")
    return graph


def pad_structure(system: System, graph: Graph, n_atoms: int, n_edges: int,
                  energy=np.nan, forces=None, stress=None) -> Structure:
    """Pad one structure (and its labels) to `n_atoms` atoms and `n_edges` edges."""
    n, e = system.positions.shape[0], int(np.sum(np.asarray(graph.mask)))
    if n > n_atoms or e > n_edges:
        raise ValueError(f"structure with {n} atoms / {e} edges exceeds the batch shape "
                         f"({n_atoms} atoms / {n_edges} edges)")
    dtype = np.asarray(system.positions).dtype
    order = np.argsort(~np.asarray(graph.mask), kind="stable")[:e]  # real edges first

    def pad(a, size, fill=0):
        a = np.asarray(a)
        out = np.full((size,) + a.shape[1:], fill, dtype=a.dtype)
        out[: a.shape[0]] = a
        return out

    positions = pad(system.positions, n_atoms)
    positions[n:] = np.asarray(system.positions).mean(0)  # irrelevant: padded atoms have no edges
    numbers = pad(system.numbers, n_atoms, fill=int(np.asarray(system.numbers)[0]))
    g = Graph(senders=pad(np.asarray(graph.senders)[order], n_edges),
              receivers=pad(np.asarray(graph.receivers)[order], n_edges),
              shifts=pad(np.asarray(graph.shifts)[order], n_edges),
              mask=pad(np.ones(e, bool), n_edges, False), overflow=np.array(False))
    forces = np.full((n, 3), np.nan) if forces is None else np.asarray(forces)
    stress = np.full(6, np.nan) if stress is None else np.asarray(stress)
    return Structure(System(positions, np.asarray(system.cell), numbers, system.pbc), g,
                     pad(np.ones(n, bool), n_atoms, False), np.asarray(energy, dtype),
                     pad(forces.astype(dtype), n_atoms, np.nan), stress.astype(dtype))


def stack(structures: list[Structure]) -> Batch:
    """Stack padded structures along a new leading axis (pbc must agree)."""
    pbc = structures[0].system.pbc
    if any(s.system.pbc != pbc for s in structures):
        raise ValueError("all structures in a batch must share pbc")
    arrays = [s._replace(system=s.system._replace(pbc=None)) for s in structures]
    out = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *arrays)
    return out._replace(system=out.system._replace(pbc=pbc))


def take(batch: Batch, idx) -> Batch:
    """Sub-batch by indices (host side); an integer index gives one unbatched structure."""
    pbc = batch.system.pbc
    sub = jax.tree.map(lambda x: x[np.asarray(idx)], batch._replace(system=batch.system._replace(pbc=None)))
    return sub._replace(system=sub.system._replace(pbc=pbc))


def map_in_chunks(fn, batch: Batch, size: int):
    """`fn(sub-batch)` over all structures of `batch`, `size` per call, outputs (a pytree with a
    leading structure axis) concatenated on the host. Every call has one shape, so one compiled
    program: the last call is filled up with repeats of the first structures, and a batch smaller
    than `size` is not padded up to it. Evaluating the whole batch at once needs memory ∝ its
    size (264 Nequix cells of ≤ 8 atoms asked for 28 GB)."""
    n = int(batch.node_mask.shape[0])
    size = min(size, n)
    parts = [jax.tree.map(np.asarray, fn(take(batch, np.arange(c, c + size) % n))) for c in range(0, n, size)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)


def pad_all(items: list, n_atoms: int | None = None, n_edges: int | None = None) -> list[Structure]:
    """Pad (system, graph, labels) tuples to a common shape (default: the largest)."""
    n_atoms = n_atoms or max(s.positions.shape[0] for s, _, _ in items)
    n_edges = n_edges or max(int(np.sum(np.asarray(g.mask))) for _, g, _ in items)
    return [pad_structure(s, g, n_atoms, n_edges, **labels) for s, g, labels in items]


def size_buckets(n_edges, n_buckets: int, min_size: int = 1) -> np.ndarray:
    """A bucket label per structure (0 = smallest) for `n_buckets` fixed-shape batches:
    contiguous ranges of edge count, each of ≥ `min_size` structures, chosen to minimise the
    padded work Σ_b n_b · max_b(edges) (dynamic programming over the sorted counts). One bucket
    is one compiled program; 424 phonondb unit cells (edges 40–1976, mean 496) pad to 4.0× their
    edges in one bucket, 1.5× in three."""
    e = np.asarray(n_edges)
    order = np.argsort(e, kind="stable")
    srt = e[order].astype(float)
    n = len(e)
    n_buckets = max(1, min(n_buckets, n // max(min_size, 1)))
    # cost[k, j]: least padded work of the j smallest structures in k buckets; cut: where bucket k starts
    cost = np.full((n_buckets + 1, n + 1), np.inf)
    cost[0, 0] = 0.0
    cut = np.zeros((n_buckets + 1, n + 1), int)
    starts = np.arange(n + 1)
    for k in range(1, n_buckets + 1):
        for j in range(k * min_size, n + 1):
            i = starts[: j - min_size + 1]
            total = cost[k - 1, i] + (j - i) * srt[j - 1]
            cut[k, j] = int(np.argmin(total))
            cost[k, j] = total[cut[k, j]]
    labels = np.empty(n, int)
    j = n
    for k in range(n_buckets, 0, -1):
        i = cut[k, j]
        labels[order[i:j]] = k - 1
        j = i
    return labels


def bucket_shape(n_atoms: int, n_edges: int) -> tuple[int, int]:
    """Padded (atoms, edges): atoms up to a multiple of 32, edges up the ladder 512·1.5^k."""
    atoms = 32 * int(np.ceil(n_atoms / 32))
    edges = 512
    while edges < n_edges:
        edges = int(np.ceil(edges * 1.5 / 64) * 64)
    return atoms, edges


def common_shape(shapes, edge_margin: float = 1.1) -> tuple[int, int]:
    """One padded shape for many (atoms, edges): the largest of each, edges × `edge_margin`
    (room for relaxed cells), rounded by `bucket_shape`."""
    atoms = max(a for a, _ in shapes)
    edges = int(np.ceil(max(e for _, e in shapes) * edge_margin))
    return bucket_shape(atoms, edges)
