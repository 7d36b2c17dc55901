"""Training loop pieces: batches are pure functions of the step."""
import jax
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


def test_a_nonfinite_step_changes_nothing_and_fit_stops_after_three(tmp_path):
    """A NaN loss (e.g. an implicit gradient solved at a saddle) must not reach the model: the
    step leaves parameters, optimiser state and EMA as they were and says so in metrics.csv;
    three such steps in a row stop `fit` with an error naming them."""
    import csv

    import jax.numpy as jnp
    import optax

    from curvax.finetune.training import fit, init_state, make_update

    def loss_fn(model, batch, key):  # (w − target)², NaN when the batch says so
        loss = (model["w"] - 1.0) ** 2 * batch
        return loss, {}

    opt = optax.adam(0.1)
    state, static = init_state({"w": jnp.asarray(3.0)}, opt)
    update = make_update(loss_fn, opt, ema_decay=0.5)
    good, m = update(state, static, jnp.asarray(1.0), None)
    assert float(m["nonfinite"]) == 0 and float(good.params["w"]) < 3.0
    bad, m = update(good, static, jnp.asarray(jnp.nan), None)
    assert float(m["nonfinite"]) == 1 and int(bad.step) == int(good.step) + 1
    for a, b in zip(jax.tree.leaves((bad.params, bad.opt_state, bad.ema)),
                    jax.tree.leaves((good.params, good.opt_state, good.ema))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    batches = [1.0, jnp.nan, 1.0, jnp.nan, jnp.nan, jnp.nan, 1.0]  # one isolated NaN step is skipped, three stop
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at steps \[4, 5, 6\]"):
        fit(state, static, lambda s, st, k, key: update(s, st, jnp.asarray(batches[k]), key), len(batches),
            tmp_path, checkpoint_every=100, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["nonfinite"]) for r in rows] == [0, 1, 0, 1, 1, 1]
