"""The evaluation's shape rungs (`finetune.evaluation.supercell_buckets`): few compilations,
little padding, every material on a shape it fits, chunk widths that fit the probe counts."""
import numpy as np
import pytest
from ase.build import bulk

from curvax.finetune import evaluation as ev


def _cost(buckets, probes, uses):
    """Total modelled cost: compilations + padded execution (the module's cost model)."""
    rungs = {}
    for (shape, chunk), k, u in zip(buckets, probes, uses):
        rungs.setdefault((shape, chunk), []).append((k, u))
    width = lambda s: s[1] + ev._ATOM_WEIGHT * s[0]
    return len(rungs) * ev._COMPILE_COST + sum(
        sum(u * -(-k // c) for k, u in m) * (ev._CALL_OVERHEAD + c) * width(s) for (s, c), m in rungs.items())


def test_cheap_rungs_merge_and_expensive_ones_stay():
    own = [(32, 1152), (64, 1728), (64, 1728), (64, 5952), (64, 5952), (64, 8960)]
    probes = [1, 4, 10, 9, 11, 11]
    uses = [4, 2, 2, 2, 2, 2]
    got = ev._merge_rungs(own, probes, uses)
    shapes = [s for s, _ in got]
    # the one-probe Cr-like cell joins the next rung: its extra padding costs far less than a compile
    assert shapes[0] == (64, 1728)
    # the 5 952-edge materials are too many probes to pad to 8 960 edges; the lone 8 960 one stays
    assert shapes[3] == shapes[4] == (64, 5952) and shapes[5] == (64, 8960)
    for (a, e), (sa, se) in zip(own, shapes):   # every material fits its rung
        assert sa >= a and se >= e
    assert _cost(got, probes, uses) < _cost([(s, 4) for s in own], probes, uses)
    # one rung per shape, one chunk width per rung
    assert len({s for s in shapes}) == len(set(got))


def test_chunk_width_follows_the_probe_counts():
    # one probe each: calls of 1 (a call of 4 would be 3 zero probes); 4 or 8 probes: calls of 4
    assert {c for _, c in ev._merge_rungs([(64, 2624)] * 3, [1, 1, 1], [2, 2, 2])} == {1}
    assert {c for _, c in ev._merge_rungs([(64, 2624)] * 2, [4, 8], [2, 2])} == {4}
    assert {c for _, c in ev._merge_rungs([(64, 2624)] * 2, [4, 8], [2, 2], max_chunk=2)} == {2}


def test_many_evaluations_keep_padding_low():
    """With many uses the execution outweighs a compilation: no merge."""
    own, probes = [(32, 1152), (64, 5952)], [3, 3]
    assert [s for s, _ in ev._merge_rungs(own, probes, [2, 2])] == [(64, 5952)] * 2
    assert [s for s, _ in ev._merge_rungs(own, probes, [200, 200])] == own


@pytest.mark.parametrize("size", [1, 2])
def test_supercell_buckets_on_phonopy_objects(size):
    from phonopy import Phonopy

    from curvax.phonons.convert import atoms_to_phonopy
    from curvax.phonons.fc2 import displacement_probes, supercell_shape

    cells = [Phonopy(atoms_to_phonopy(bulk("Cu", "fcc", a=3.6)), supercell_matrix=np.eye(3) * size, log_level=0),
             Phonopy(atoms_to_phonopy(bulk("NaCl", "rocksalt", a=5.6)), supercell_matrix=np.eye(3) * 2, log_level=0)]
    got = ev.supercell_buckets(cells, 6.0)
    for p, ((atoms, edges), chunk) in zip(cells, got):
        n, e = supercell_shape(p, 6.0)
        assert atoms >= n and edges >= 1.1 * e
        assert 1 <= chunk <= len(displacement_probes(p)[1])   # no call wider than the probes
