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
