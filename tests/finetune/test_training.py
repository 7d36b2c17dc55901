"""Training loop pieces: batches are pure functions of the step."""
import numpy as np
import pytest

from curvax.finetune.training import batch_indices


def test_grouped_batches_come_from_one_group_and_cover_the_epoch():
    """With groups (shape buckets) every batch lies in one group and an epoch draws each item
    of the full batches once; without groups the batches are consecutive slices of the epoch's
    seeded permutation (as before groups existed, so older runs resume unchanged)."""
    labels = np.array([0] * 7 + [1] * 9 + [2] * 4)
    per_epoch = 7 // 3 + 9 // 3 + 4 // 3
    seen = [batch_indices(20, 3, step, 7, labels) for step in range(per_epoch)]
    assert all(len(set(labels[b])) == 1 and len(b) == 3 for b in seen)
    assert len(set(np.concatenate(seen))) == 3 * per_epoch
    assert not np.array_equal(batch_indices(20, 3, per_epoch, 7, labels), seen[0])  # next epoch reshuffles
    for step in range(10):
        epoch, pos = divmod(step, 20 // 3)
        perm = np.random.default_rng([7, epoch]).permutation(20)
        np.testing.assert_array_equal(batch_indices(20, 3, step, 7), perm[3 * pos: 3 * pos + 3])
    with pytest.raises(ValueError, match="no group"):
        batch_indices(4, 3, 0, 0, [0, 0, 1, 1])
