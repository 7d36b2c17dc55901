"""Fixed-shape batches: shape buckets minimise padding."""
import itertools

import numpy as np
import pytest

from curvax.batch import size_buckets


def _padded(edges, labels):
    return sum(np.sum(labels == b) * edges[labels == b].max() for b in np.unique(labels))


@pytest.mark.parametrize("seed", range(5))
def test_size_buckets_minimise_padded_edges(seed):
    """Against every split of the sorted counts into 3 contiguous ranges of ≥ 2 structures:
    the dynamic programme finds the least padded work; labels grow with size."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(20, 2000, size=12)
    labels = size_buckets(edges, 3, min_size=2)
    srt = np.sort(edges)
    best = min(sum(len(p) * p.max() for p in np.split(srt, cuts))
               for cuts in itertools.combinations(range(2, 11), 2) if min(np.diff((0,) + cuts + (12,))) >= 2)
    assert _padded(edges, labels) == best
    assert all(np.sum(labels == b) >= 2 for b in range(3))
    assert all(edges[labels == b].max() <= edges[labels == b + 1].min() for b in range(2))


def test_size_buckets_edge_cases():
    assert list(size_buckets([5, 1, 3], 1)) == [0, 0, 0]
    assert list(size_buckets([5, 1, 3], 3)) == [2, 0, 1]
    assert list(size_buckets([5, 1, 3], 3, min_size=2)) == [0, 0, 0]  # too few for two buckets of 2


def test_map_in_chunks_keeps_order_and_one_call_shape():
    from ase.build import bulk

    from curvax.batch import graph_of, map_in_chunks, pad_all, stack
    from curvax.system import from_atoms

    items = []
    for k, a in enumerate([bulk("Cu", "fcc", a=3.6), bulk("NaCl", "rocksalt", a=5.6), bulk("Si", "diamond", a=5.43)] * 2):
        s = from_atoms(a * (1, 1, 1 + k % 2))
        items.append((s, graph_of(s, 3.0), {}))
    batch = stack(pad_all(items))
    sizes = []

    def fn(b):
        sizes.append(b.node_mask.shape[0])
        return np.asarray(b.n_atoms), np.asarray(b.system.positions).sum(axis=(1, 2))

    whole = fn(batch)
    for size in (1, 4, 6, 10):
        sizes.clear()
        got = map_in_chunks(fn, batch, size)
        assert set(sizes) == {min(size, 6)}   # one shape; a small batch is not padded up to `size`
        for g, w in zip(got, whole):
            np.testing.assert_array_equal(g, w)
