"""Jit-able neighbour list over periodic triclinic cells, with fixed capacity and an overflow flag.

Edge convention (same as Nequix/matscipy "ijS"): edge e links centre i = `receivers[e]` to
neighbour j = `senders[e]`, with bond vector

    r_ij = x_j - x_i + S_e · cell          (S_e integer image offsets, Å)

Every pair within the cutoff appears in both directions (a full list), or — `half=True`, for
pair potentials (`curvax.potentials.PairPotential`) — in one of its two directions (i, j, S) ~
(j, i, −S): i < j for the all-pairs searches, the bin offset in the half shell for the cell
list; an atom's own periodic images (i = j) with the S whose first nonzero component is positive.
Arrays have a fixed `capacity`
(padded edges have `mask == False`); when a rebuild finds more pairs than fit, or the cell
has changed so that the static search grid no longer covers the cutoff, `overflow` is True
and the caller must re-`allocate` (glp / jax-md style).

Three search methods, chosen at allocation time:
- "minimage": all pairs, each at its minimum image S = −round(s_j − s_i) (fractional s), O(N²)
  but no image loop; exact when every lattice-plane spacing h_a ≥ 2 r_c (a vector shorter than
  r_c then has fractional components |·| < r_c/h_a ≤ ½, so the rounded image is the only one).
  Chosen for such cells up to MINIMAGE_MAX_ATOMS atoms, where it beats the cell list.
- "cells": a cell list with bins at least one cutoff wide, O(N); each atom looks at its 27
  neighbouring bins with their image offsets, which stay distinct (bin, image) pairs for any
  number of bins ≥ 1, so it is exact for every cell at least one cutoff wide. Chosen for
  larger periodic cells at least 2 cutoffs wide along each axis.
- "brute": all pairs × all periodic images within range, O(N² K); chosen for molecules and for
  cells thinner than 2 cutoffs (where a 1-bin cell list is the same search), including cells
  thinner than one cutoff (several images per axis are enumerated).

Reuse with a skin (jax-md's `dr_threshold`, glp's `skin`): a list built at r_l = r_c + skin at
(x⁰, C⁰) still holds every pair within r_c at (x, C) while

    σ_min(C⁰⁻¹ C) · (r_l − 2 max_i |Δs_i C⁰|) > r_c,     Δs_i = x_i C⁻¹ − x⁰_i C⁰⁻¹

(the fractional moves measured in the old cell, and the cell's deformation bounded by its
smallest singular value; `needs_rebuild`). At fixed cell this is max_i |Δx_i| < skin/2.
When a list overflows, `explain_overflow` names which capacity ran out and the fix.
"""
from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvax.protocol import InitApply
from curvax.system import System

PAD_BOND_LENGTH = 1.0e3  # Å; padded edges get a bond this long, far beyond any cutoff
MINIMAGE_MAX_ATOMS = 4096  # "minimage" (O(N²), one image) below, "cells" above (benchmarks/README.md)


class Graph(NamedTuple):
    """Edges of one structure (padded to a fixed capacity)."""

    senders: jnp.ndarray  # (E,) neighbour j
    receivers: jnp.ndarray  # (E,) centre i
    shifts: jnp.ndarray  # (E, 3) integer image offsets S (stored as float)
    mask: jnp.ndarray  # (E,) True for real edges
    overflow: jnp.ndarray  # () True if the list must be re-allocated

    @property
    def n_edges(self):
        return jnp.sum(self.mask)


@dataclasses.dataclass(frozen=True)
class NeighborSpec:
    """Static shape information of a neighbour list (hashable: a jit static argument)."""

    cutoff: float
    capacity: int
    method: str  # "minimage" | "cells" | "brute"
    images: tuple = (0, 0, 0)  # brute: image range per axis
    bins: tuple = (1, 1, 1)  # cells: number of bins per axis
    bin_capacity: int = 0
    pbc: tuple = (True, True, True)
    half: bool = False  # each pair once (module doc)


def _plane_spacings(cell: np.ndarray) -> np.ndarray:
    """Distance between lattice planes along each axis, 1/|b_a| [Å] (b: reciprocal rows, no 2π)."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)


def _complete_cell(cell, pbc):
    """Replace the cell by a large box when nothing is periodic (molecules)."""
    if not any(pbc):
        return jnp.eye(3, dtype=cell.dtype)
    return cell


def check_system(system: System) -> None:
    """ValueError for what no neighbour list supports: mixed periodicity, non-finite
    positions (naming the atoms) or cell, a degenerate periodic cell. (`curvax.validation`
    adds the checks of user input on top of these.)"""
    pbc = tuple(bool(p) for p in system.pbc)
    if any(pbc) and not all(pbc):
        raise ValueError(f"mixed periodicity pbc={list(pbc)} is not supported; use all True or all False")
    bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(system.positions)), axis=1))
    if bad.size:
        raise ValueError(f"positions of atom(s) {bad[:10].tolist()} are NaN or inf")
    if not np.all(np.isfinite(np.asarray(system.cell))):
        raise ValueError("cell contains NaN or inf")
    if all(pbc) and abs(np.linalg.det(np.asarray(system.cell, dtype=np.float64))) < 1e-8:
        raise ValueError("pbc=True but the cell is degenerate (zero volume)")


def allocate(system: System, cutoff: float, capacity_multiplier: float = 1.25,
             method: str = "auto", min_capacity: int = 16, half: bool = False) -> tuple[NeighborSpec, Graph]:
    """Choose static sizes for `system` and build its graph (`half`: each pair once, module
    doc). Returns `(spec, graph)`.

    Raises ValueError if the structure is inconsistent (degenerate periodic cell) or
    mixes periodic and non-periodic axes in a way the list does not support.
    """
    check_system(system)
    pbc = tuple(bool(p) for p in system.pbc)
    cell = np.asarray(system.cell, dtype=np.float64)
    if all(pbc):
        spacing = _plane_spacings(cell)
        images = tuple(int(np.ceil(cutoff / s)) for s in spacing)
        bins = tuple(int(np.floor(s / cutoff)) for s in spacing)
    else:
        images, bins = (0, 0, 0), (1, 1, 1)
    if method == "auto":  # benchmarks/README.md: minimage for small cells, the cell list for large
        if all(pbc) and min(bins) >= 2:
            method = "minimage" if system.positions.shape[0] <= MINIMAGE_MAX_ATOMS else "cells"
        else:
            method = "brute"
    if method == "minimage" and (not all(pbc) or min(_plane_spacings(cell)) < 2 * cutoff):
        raise ValueError(f"minimum-image search needs a periodic cell at least 2 cutoffs wide (cutoff {cutoff} Å, "
                         f"plane spacings {np.round(_plane_spacings(cell), 3).tolist()} Å)")
    if method == "cells" and (not all(pbc) or min(bins) < 1):
        raise ValueError(f"cell list needs a periodic cell at least one cutoff wide (bins {bins})")
    bin_capacity = 0
    if method == "cells":
        wrapped, _ = _wrap(system.positions, system.cell, pbc)
        counts = np.bincount(np.asarray(_bin_index(wrapped, system.cell, bins)), minlength=int(np.prod(bins)))
        # room for fluctuations: a lattice plane on a bin boundary moves as a whole (≈ √count)
        peak = counts.max()
        bin_capacity = int(np.ceil((peak + 2 * np.sqrt(peak) + 2) * capacity_multiplier))
    probe = NeighborSpec(cutoff=float(cutoff), capacity=1, method=method, images=images,
                         bins=bins, bin_capacity=bin_capacity, pbc=pbc, half=bool(half))
    count = int(_count_pairs(system, probe))
    capacity = max(min_capacity, int(np.ceil(count * capacity_multiplier)))
    spec = dataclasses.replace(probe, capacity=capacity)
    return spec, build(system, spec)


def _wrap(positions, cell, pbc):
    """Fold positions into the cell. Returns wrapped positions and integer cell offsets k (x = x_w + k·cell)."""
    if not all(pbc):
        return positions, jnp.zeros_like(positions)
    frac = positions @ jnp.linalg.inv(cell)
    k = jnp.floor(frac)
    return (frac - k) @ cell, k


def _bin_index(wrapped, cell, bins):
    """Bin of each wrapped position. Not wrapped again: an atom on the cell's upper face whose
    fractional coordinate rounds to 1.0 stays in the top bin, where its position is (re-wrapping
    would put it in bin 0 at the far side, and its neighbours' image offsets would be wrong)."""
    frac = wrapped @ jnp.linalg.inv(cell)
    b = jnp.clip(jnp.floor(frac * jnp.asarray(bins)).astype(jnp.int32), 0, jnp.asarray(bins) - 1)
    return (b[:, 0] * bins[1] + b[:, 1]) * bins[2] + b[:, 2]


def _image_offsets(images):
    rng = [range(-m, m + 1) for m in images]
    return np.array(list(itertools.product(*rng)), dtype=np.float64)  # (K, 3)


def _first_pair(i, j, shift):
    """True for the one direction a half list keeps of the pair (i, j, S) ~ (j, i, −S): i < j, or
    i = j and the first nonzero component of S positive (module doc). Broadcasts; S (..., 3)."""
    s0, s1, s2 = shift[..., 0], shift[..., 1], shift[..., 2]
    positive = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
    return (i < j) | ((i == j) & positive)


def _candidate_mask_brute(xw, cell, spec):
    shifts = jnp.asarray(_image_offsets(spec.images), dtype=xw.dtype)
    offsets = shifts @ cell
    # (i, j, k): |x_j − x_i + S_k·cell|², per Cartesian component (fused; the minimum image's note)
    r2 = sum((xw[None, :, None, a] - xw[:, None, None, a] + offsets[None, None, :, a]) ** 2 for a in range(3))
    n = xw.shape[0]
    self_image = (jnp.eye(n, dtype=bool)[:, :, None]) & jnp.all(shifts == 0, axis=1)[None, None, :]
    within = (r2 < spec.cutoff ** 2) & ~self_image
    if spec.half:
        idx = jnp.arange(n)
        within &= _first_pair(idx[:, None, None], idx[None, :, None], shifts[None, None])
    return within, shifts


def _minimage_fractions(xw, cell):
    """Fractional coordinates (N, 3) of the wrapped positions, for the minimum-image search."""
    return xw @ jnp.linalg.inv(cell)


def _candidate_mask_minimage(frac, cell, spec):
    """(N, N) pairs (i, j) within the cutoff at the minimum image S = −round(s_j − s_i).

    Written per Cartesian component on (N, N) arrays, r_c = Σ_a (d_a − round(d_a)) C_ac, so that
    XLA fuses the whole search into one loop (an (N, N, 3) array and a matrix product made it
    5× slower at 256 atoms; benchmarks/README.md); the shifts of the kept pairs are
    `_minimage_shifts`."""
    d = [frac[None, :, a] - frac[:, None, a] for a in range(3)]  # (i, j): s_j − s_i
    d = [da - jnp.round(da) for da in d]
    r2 = sum((d[0] * cell[0, c] + d[1] * cell[1, c] + d[2] * cell[2, c]) ** 2 for c in range(3))
    idx = jnp.arange(frac.shape[0])
    # no self-images: every plane spacing is ≥ 2 cutoffs
    other = (idx[:, None] < idx[None, :]) if spec.half else (idx[:, None] != idx[None, :])
    return (r2 < spec.cutoff ** 2) & other


def _minimage_shifts(frac, i, j):
    """Image shifts S = −round(s_j − s_i) of the pairs (i, j), (E, 3)."""
    return -jnp.round(frac[j] - frac[i])


def _bin_table(xw, cell, spec):
    """(n_bins, bin_capacity) table of atom indices (-1 = empty) and a bin-overflow flag."""
    nbins = int(np.prod(spec.bins))
    bid = _bin_index(xw, cell, spec.bins)
    order = jnp.argsort(bid)
    sorted_bins = bid[order]
    counts = jnp.zeros(nbins, jnp.int32).at[bid].add(1)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(xw.shape[0]) - starts[sorted_bins]
    table = jnp.full((nbins, spec.bin_capacity), -1, jnp.int32)
    table = table.at[sorted_bins, slot].set(order.astype(jnp.int32), mode="drop")
    return table, bid, jnp.max(counts) > spec.bin_capacity


_NEIGHBOR_BINS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.int32)  # (27, 3)
# a half list looks at half of them: the bin itself and the 13 offsets whose first nonzero
# component is positive (a pair found at offset d is found again, reversed, at −d)
_HALF_SHELL = _NEIGHBOR_BINS[[not d.any() or d[np.flatnonzero(d)[0]] > 0 for d in _NEIGHBOR_BINS]]  # (14, 3)


def _cells_neighbor_bins(cell, spec, bid):
    """For each atom: its K neighbouring bins (27; a half list 14), (N, K) bin indices, and the
    image shift of each (N, K, 3)."""
    offsets = _HALF_SHELL if spec.half else _NEIGHBOR_BINS
    bins = jnp.asarray(spec.bins)
    b3 = jnp.stack([bid // (spec.bins[1] * spec.bins[2]), (bid // spec.bins[2]) % spec.bins[1],
                    bid % spec.bins[2]], axis=1)  # (N, 3)
    nb = b3[:, None, :] + offsets[None]  # (N, K, 3)
    shift = jnp.floor_divide(nb, bins)  # -1, 0 or +1 image
    nb = nb - shift * bins
    nb_id = (nb[..., 0] * spec.bins[1] + nb[..., 1]) * spec.bins[2] + nb[..., 2]
    return nb_id, shift.astype(cell.dtype)


def _candidate_mask_cells(xw, cell, spec, chunk=2048):
    """(N, K·cap) pairs within the cutoff among the candidates of each atom's K neighbouring
    bins (`cap` slots each, of the (n_bins, cap) `table` of atom indices, -1 = empty), the bins
    (N, K) and their image shifts (N, K, 3), the table and the bin-overflow flag. An atom's own
    bin at image 0 holds the pair with itself (dropped) and, for a half list, each pair of its
    atoms twice (kept once: j > i). Written per Cartesian component, so that XLA fuses it (the
    minimum image's note); the candidates (N, K·cap) are never materialised."""
    table, bid, bin_overflow = _bin_table(xw, cell, spec)
    nb_id, shift = _cells_neighbor_bins(cell, spec, bid)
    own = jnp.asarray(np.all((_HALF_SHELL if spec.half else _NEIGHBOR_BINS) == 0, axis=1))[:, None]  # (K, 1)
    n = xw.shape[0]

    def one_atom(args):
        i, b, s = args  # (K,), (K, 3)
        c = table[b]  # (K, cap)
        cj = jnp.maximum(c, 0)
        r2 = sum((xw[cj, a] - xw[i, a] + (s[:, 0] * cell[0, a] + s[:, 1] * cell[1, a]
                                          + s[:, 2] * cell[2, a])[:, None]) ** 2 for a in range(3))
        ok = (c >= 0) & (r2 < spec.cutoff ** 2)
        return ok & ~(own & ((c <= i) if spec.half else (c == i)))

    mask = jax.lax.map(one_atom, (jnp.arange(n), nb_id, shift), batch_size=min(chunk, n))
    return mask.reshape(n, -1), nb_id, shift, table, bin_overflow


def _bisect(count_upto, rank, n_cols: int):
    """Per query, the first column c in [0, n_cols) with count_upto(c) > rank (binary search;
    count_upto(c): (Q,) counts, non-decreasing in c)."""
    lo = jnp.zeros(rank.shape, jnp.int32)
    hi = jnp.full(rank.shape, n_cols - 1, jnp.int32)
    for _ in range(max(1, int(np.ceil(np.log2(n_cols))))):
        mid = (lo + hi) // 2
        right = count_upto(mid) <= rank
        lo, hi = jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)
    return lo


def _compact(mask, size: int):
    """Flat (row-major) indices of the first `size` True entries of the (N, W) boolean `mask`,
    as `jnp.nonzero(mask.ravel(), size=size)` (entries past the number of True ones are in range
    but arbitrary), and the number of True entries (counted here: a second reduction over the
    mask made XLA compute a fused mask twice, +20 ms at 2 048 atoms); 4× faster than `nonzero` on
    CPU at 10⁷ entries: no scatter or cumsum over all N·W entries. Each row is packed into 32-bit words and counted by popcount; the k-th True entry is then
    found by three searches: its row (cumulative row counts), its word (cumulative word counts in
    that row), its bit (popcounts of the word's low bits)."""
    n, w = mask.shape
    n_words = -(-w // 32)
    bits = jnp.pad(mask, ((0, 0), (0, 32 * n_words - w))).reshape(n, n_words, 32).astype(jnp.uint32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)  # (N, words)
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    word_end = jnp.cumsum(per_word, axis=1)  # True entries up to and including each word
    row_end = jnp.cumsum(word_end[:, -1])
    k = jnp.arange(size, dtype=jnp.int32)
    row = jnp.minimum(jnp.searchsorted(row_end, k, side="right"), n - 1).astype(jnp.int32)
    rank = k - (row_end[row] - word_end[row, -1])  # within the row
    word = _bisect(lambda c: word_end[row, c], rank, n_words)
    rank = rank - (word_end[row, word] - per_word[row, word])  # within the word
    v = words[row, word]

    def bits_upto(b):  # set bits 0..b of v: v & (2^(b+1) − 1), which wraps to all ones at b = 31
        low = (jnp.uint32(2) << b.astype(jnp.uint32)) - jnp.uint32(1)
        return jax.lax.population_count(v & low).astype(jnp.int32)

    bit = _bisect(bits_upto, rank, 32)
    return row * w + jnp.minimum(32 * word + bit, w - 1), row_end[-1]


def _geometry_overflow(cell, spec):
    """True if the current cell is too thin for the static images/bins chosen at allocation."""
    if not all(spec.pbc):
        return jnp.array(False)
    spacing = 1.0 / jnp.linalg.norm(jnp.linalg.inv(cell).T, axis=1)
    if spec.method == "brute":
        return jnp.any(spec.cutoff / spacing > jnp.asarray(spec.images))
    if spec.method == "minimage":
        return jnp.any(spacing < 2 * spec.cutoff)
    return jnp.any(spacing / jnp.asarray(spec.bins) < spec.cutoff)


@partial(jax.jit, static_argnums=1)
def _count_pairs(system, spec):
    cell = _complete_cell(system.cell, spec.pbc)
    xw, _ = _wrap(system.positions, cell, spec.pbc)
    if spec.method == "brute":
        return jnp.sum(_candidate_mask_brute(xw, cell, spec)[0])
    if spec.method == "minimage":
        return jnp.sum(_candidate_mask_minimage(_minimage_fractions(xw, cell), cell, spec))
    return jnp.sum(_candidate_mask_cells(xw, cell, spec)[0])


@partial(jax.jit, static_argnums=1)
def build(system: System, spec: NeighborSpec) -> Graph:
    """Rebuild the graph of `system` with the static sizes in `spec` (jit-able)."""
    cell = _complete_cell(system.cell, spec.pbc)
    xw, k = _wrap(system.positions, cell, spec.pbc)
    if spec.method == "brute":
        within, image_shifts = _candidate_mask_brute(xw, cell, spec)
        n, _, n_img = within.shape
        flat, count = _compact(within.reshape(n, -1), spec.capacity)
        i = flat // (n * n_img)
        j = (flat // n_img) % n
        s = image_shifts[flat % n_img]
        extra_overflow = jnp.array(False)
    elif spec.method == "minimage":
        frac = _minimage_fractions(xw, cell)
        within = _candidate_mask_minimage(frac, cell, spec)
        n = within.shape[0]
        flat, count = _compact(within, spec.capacity)
        i, j = flat // n, flat % n
        s = _minimage_shifts(frac, i, j)
        extra_overflow = jnp.array(False)
    else:
        within, nb_id, bin_shift, table, extra_overflow = _candidate_mask_cells(xw, cell, spec)
        flat, count = _compact(within, spec.capacity)
        i, q = flat // within.shape[1], flat % within.shape[1]
        k_bin = q // spec.bin_capacity  # which of the atom's neighbouring bins, and its slot
        j = table[nb_id[i, k_bin], q % spec.bin_capacity]
        s = bin_shift[i, k_bin]
    mask = jnp.arange(spec.capacity) < count
    # shifts relative to the unwrapped input positions: x_j - x_i + S·cell
    s = s - k[j] + k[i]
    i = jnp.where(mask, i, 0).astype(jnp.int32)
    j = jnp.where(mask, j, 0).astype(jnp.int32)
    s = jnp.where(mask[:, None], s, 0.0)
    overflow = (count > spec.capacity) | extra_overflow | _geometry_overflow(cell, spec)
    return Graph(senders=j, receivers=i, shifts=s, mask=mask, overflow=overflow)


def needs_rebuild(positions, cell, ref_positions, ref_cell, cutoff: float, skin: float, pbc=(True, True, True),
                  fixed_cell: bool = False):
    """True unless a list built at `cutoff + skin` [Å] at (ref_positions, ref_cell) still holds
    every pair within `cutoff` at (positions, cell) (module doc; jit-able). fixed_cell: the
    caller guarantees cell == ref_cell (MD at constant volume): max_i |Δx_i| < skin/2 is checked
    without the cell's inverse and singular values."""
    if fixed_cell or not all(pbc):
        drift = jnp.max(jnp.linalg.norm(positions - ref_positions, axis=-1))
        return 2.0 * drift >= skin
    inv0 = jnp.linalg.inv(ref_cell)
    ds = positions @ jnp.linalg.inv(cell) - ref_positions @ inv0
    drift = jnp.max(jnp.linalg.norm(ds @ ref_cell, axis=-1))
    smin = jnp.min(jnp.linalg.svd(inv0 @ cell, compute_uv=False))
    return ~(smin * (cutoff + skin - 2.0 * drift) > cutoff)


def explain_overflow(system: System, spec: NeighborSpec) -> str:
    """Which static size of `spec` no longer fits `system`, and the fix (host side): the edge
    capacity, a cell-list bin's capacity, or the cell's geometry (thinner than the search grid)."""
    cell = _complete_cell(jnp.asarray(system.cell), spec.pbc)
    reasons = []
    if bool(_geometry_overflow(cell, spec)):
        reasons.append(f"the cell became too thin for the {spec.method} search chosen at allocation "
                       f"(images {spec.images}, bins {spec.bins}) — re-allocate for the new cell")
    if spec.method == "cells":
        xw, _ = _wrap(system.positions, cell, spec.pbc)
        peak = int(np.bincount(np.asarray(_bin_index(xw, cell, spec.bins))).max())
        if peak > spec.bin_capacity:
            reasons.append(f"a cell-list bin holds {peak} atoms > bin capacity {spec.bin_capacity} "
                           f"(atoms crowded together) — re-allocate or raise capacity_multiplier")
    count = int(_count_pairs(system, dataclasses.replace(spec, capacity=1)))
    if count > spec.capacity:
        reasons.append(f"{count} pairs within {spec.cutoff} Å > edge capacity {spec.capacity} "
                       f"(structure compressed or atoms clustered) — re-allocate or raise capacity_multiplier")
    return "; ".join(reasons) or "no capacity is exceeded now (the overflow was transient)"


def edge_vectors(positions, cell, graph: Graph):
    """Bond vectors r_ij = x_j - x_i + S·cell [Å]; padded edges get a bond of PAD_BOND_LENGTH."""
    r = positions[graph.senders] - positions[graph.receivers] + graph.shifts @ cell
    pad = jnp.asarray([PAD_BOND_LENGTH, 0.0, 0.0], r.dtype)  # broadcast: no (E, 3) constant to fold
    return jnp.where(graph.mask[:, None], r, pad)


def neighbor_list(cutoff: float, capacity_multiplier: float = 1.25, method: str = "auto",
                  half: bool = False) -> InitApply:
    """Factory returning the (init, apply) pair of `curvax.protocol`:

    init(system) -> (spec, graph)      # host side: picks static sizes (`allocate`)
    apply(system, spec) -> graph       # jit-able (`build`); check graph.overflow
    """
    return InitApply(partial(allocate, cutoff=cutoff, capacity_multiplier=capacity_multiplier, method=method,
                             half=half), build)
