"""Upstream (E/F/σ) frames: pseudo-labels are the frozen model's own E, F, σ, in any chunking."""
import numpy as np
from ase.build import bulk

from curvax import LennardJones, batch as batching, compute
from curvax.batch import graph_of
from curvax.finetune import efs_data
from curvax.relax.data import perturb
from curvax.system import from_atoms


def test_pseudo_labels_equal_the_model_in_any_chunking():
    """5 rattled Cu cells of two sizes labelled 2 per call (last call padded) equal one call
    of all 5 and a direct `compute` per structure (float64)."""
    lj = LennardJones(sigma=2.3, epsilon=0.1, cutoff=5.0, smooth=True)
    rng = np.random.default_rng(0)
    items = []
    for k in range(5):
        s = from_atoms(perturb(bulk("Cu", "fcc", a=3.6, cubic=True) * (1 + k % 2, 1, 1), 0.05, 0.02, rng))
        items.append((s, graph_of(s, lj.cutoff), {}))
    batch = batching.stack(batching.pad_all(items))
    two, whole = efs_data.pseudo_label(lj, batch, chunk=2), efs_data.pseudo_label(lj, batch, chunk=8)
    for a, b in ((two.energy, whole.energy), (two.forces, whole.forces), (two.stress, whole.stress)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for k, (s, _, _) in enumerate(items):
        ref = compute(lj, s)[0]
        n = s.positions.shape[0]
        np.testing.assert_allclose(two.energy[k], ref["energy"], rtol=1e-10)
        np.testing.assert_allclose(two.forces[k, :n], ref["forces"], atol=1e-10)
        assert np.all(np.isnan(two.forces[k, n:]))
