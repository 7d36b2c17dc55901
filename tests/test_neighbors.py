"""Neighbour list: same pairs as ase.neighborlist ("ijS"), overflow flags, jit rebuilds."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from curvax import from_atoms
from curvax.neighbors import allocate, build, edge_vectors


def _pairs(graph):
    """Set of (i, j, S) triples of the real edges."""
    m = np.asarray(graph.mask)
    i = np.asarray(graph.receivers)[m]
    j = np.asarray(graph.senders)[m]
    s = np.rint(np.asarray(graph.shifts)[m]).astype(int)
    out = {(a, b, *c) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())}
    assert len(out) == m.sum(), "duplicate edges"
    return out


def _ase_pairs(atoms, cutoff):
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    return {(a, b, *c) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())}


def _triclinic(n_rep=(2, 2, 2), a=3.6, rattle=0.1, seed=0):
    atoms = bulk("Cu", "fcc", a=a).repeat(n_rep)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.05, -0.08], [0.1, 0.95, 0.03], [0.0, -0.07, 1.1]]),
                   scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    # move some atoms outside the cell: the list must handle unwrapped positions
    atoms.positions[::3] += atoms.cell.array[0] * 1.0 - atoms.cell.array[2]
    return atoms


@pytest.mark.parametrize("n_rep,cutoff", [((1, 1, 1), 5.0),  # primitive cell ~2.5 Å: far below 2×cutoff
                                          ((2, 1, 3), 4.5),
                                          ((2, 2, 2), 3.0)])
def test_brute_matches_ase(n_rep, cutoff):
    atoms = _triclinic(n_rep)
    system = from_atoms(atoms)
    spec, graph = allocate(system, cutoff, method="brute")
    assert not bool(graph.overflow)
    assert _pairs(graph) == _ase_pairs(atoms, cutoff)
    # bond vectors as ASE's D
    r = np.asarray(edge_vectors(system.positions, system.cell, graph))[np.asarray(graph.mask)]
    assert np.all(np.linalg.norm(r, axis=1) < cutoff)
    i, j, d = ase_neighbor_list("ijD", atoms, cutoff)
    np.testing.assert_allclose(np.sort(np.linalg.norm(r, axis=1)), np.sort(np.linalg.norm(d, axis=1)),
                               atol=1e-10)


@pytest.mark.parametrize("method,n_rep,cutoff,width", [
    ("brute", (1, 1, 1), 5.0, None),  # one atom's own images: only i = j pairs
    ("brute", (2, 1, 3), 4.5, None),
    ("cells", (2, 2, 2), 4.0, 1.02),  # 1–2 bins per axis: bins repeat with other image offsets
    ("cells", (2, 2, 2), 4.0, 1.5),
    ("cells", (2, 2, 2), 3.0, None),
    ("minimage", (3, 3, 3), 4.0, 2.02)])
def test_half_list_holds_each_pair_once(method, n_rep, cutoff, width):
    """half=True: exactly one direction of every ASE pair (the half list and its reverse are
    ASE's full list, and it holds half as many); i < j for the all-pairs searches, an atom's own
    images with their first nonzero shift component positive; about half the capacity; the same
    pairs from a rebuild under jit."""
    atoms = _triclinic(n_rep)
    if width is not None:  # scale the cell to `width` cutoffs, then two cells along a
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(atoms.cell.array).T, axis=1)
        atoms.set_cell(atoms.cell.array * (width * cutoff / spacing.min()), scale_atoms=True)
        atoms = atoms.repeat((2, 1, 1))
    for seed in (0, 1):
        atoms.rattle(0.05, seed=seed)
        ref = _ase_pairs(atoms, cutoff)
        full_spec, full = allocate(from_atoms(atoms), cutoff, method=method)
        spec, half = allocate(from_atoms(atoms), cutoff, method=method, half=True)
        assert spec.half and spec.method == method and not bool(half.overflow)
        got = _pairs(half)
        assert got | {(j, i, *(-c for c in s)) for i, j, *s in got} == ref and len(got) == len(ref) // 2 > 0
        assert all(next(c for c in s if c) > 0 for i, j, *s in got if i == j)
        if method != "cells":
            assert all(i <= j for i, j, *s in got)
        assert _pairs(build(from_atoms(atoms), spec)) == got
        assert spec.capacity < 0.55 * full_spec.capacity + 16


@pytest.mark.parametrize("n,w,p", [(1, 1, 1.0), (7, 5, 0.5), (40, 31, 0.3), (40, 32, 0.02), (33, 97, 0.9),
                                   (200, 1539, 0.05)])
def test_compaction_equals_nonzero(n, w, p):
    """The popcount compaction the list builds use gives jnp.nonzero's indices (rows empty, full,
    and widths around the 32-bit word size) and the mask's count; past the count, indices stay
    in range."""
    from curvax.neighbors import _compact

    rng = np.random.default_rng(n * w)
    mask = rng.random((n, w)) < p
    mask[n // 2] = False
    mask[-1] = True
    count = int(mask.sum())
    for size in (count, count + 17):
        got, got_count = jax.jit(_compact, static_argnums=1)(mask, size)
        got = np.asarray(got)
        ref = np.asarray(jnp.nonzero(mask.ravel(), size=size)[0])
        assert int(got_count) == count
        np.testing.assert_array_equal(got[:count], ref[:count])
        assert got.min() >= 0 and got.max() < n * w


def test_cells_and_brute_agree_large():
    """294 atoms, skewed cell: the O(N) cell list, the minimum-image and the brute search give
    exactly ASE's pairs."""
    atoms = bulk("Ar", "fcc", a=5.26).repeat((7, 7, 6))  # 294 atoms
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.05], [0.05, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(0.2, seed=1)
    cutoff = 6.0
    system = from_atoms(atoms)
    spec_c, g_c = allocate(system, cutoff, method="cells")
    spec_a, g_a = allocate(system, cutoff)  # auto: minimage (≤ MINIMAGE_MAX_ATOMS atoms)
    assert spec_a.method == "minimage" and min(spec_c.bins) >= 3
    assert not bool(g_c.overflow)
    ref = _ase_pairs(atoms, cutoff)
    assert _pairs(g_c) == ref
    spec_b, g_b = allocate(system, cutoff, method="brute")
    assert _pairs(g_b) == ref
    spec_m, g_m = allocate(system, cutoff, method="minimage")
    assert _pairs(g_m) == ref


@pytest.mark.parametrize("width", [0.98, 1.02, 1.5, 1.98, 2.02, 2.6])
def test_cell_list_exact_around_one_and_two_cutoffs(width):
    """Cells from just under 1 to 2.6 cutoffs wide (triclinic, rattled, few atoms): the cell list
    (1 or 2 bins per axis: neighbouring bins repeat with other image offsets) gives exactly
    ASE's pairs, and so does the minimum-image search from 2 cutoffs on (`auto` takes it there for
    few atoms, the multi-image brute search below)."""
    cutoff = 4.0
    atoms = _triclinic((1, 1, 1), a=3.6)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(atoms.cell.array).T, axis=1)
    atoms.set_cell(atoms.cell.array * (width * cutoff / spacing.min()), scale_atoms=True)
    atoms = atoms.repeat((2, 1, 1))
    atoms.rattle(0.05, seed=2)
    system = from_atoms(atoms)
    ref = _ase_pairs(atoms, cutoff)
    auto, g_auto = allocate(system, cutoff)
    assert auto.method == ("minimage" if width >= 2 else "brute")
    assert _pairs(g_auto) == ref and not bool(g_auto.overflow)
    if width >= 2:  # the minimum image is exact from 2 cutoffs on, and refused below
        spec, g = allocate(system, cutoff, method="minimage")
        assert _pairs(g) == ref and not bool(g.overflow)
        squeezed = system._replace(positions=system.positions * 0.97, cell=system.cell * 0.97)
        assert bool(build(squeezed, spec).overflow) == (width * 0.97 < 2)
    else:
        with pytest.raises(ValueError, match="at least 2 cutoffs wide"):
            allocate(system, cutoff, method="minimage")
    if width >= 1:
        spec, g = allocate(system, cutoff, method="cells")
        assert min(spec.bins) == int(width) and _pairs(g) == ref and not bool(g.overflow)
    else:
        with pytest.raises(ValueError, match="at least one cutoff wide"):
            allocate(system, cutoff, method="cells")


@pytest.mark.parametrize("reps, cutoff", [((6, 6, 6), 6.0), ((4, 4, 4), 8.5)])
def test_cell_list_on_a_perfect_lattice(reps, cutoff):
    """Atoms exactly on bin boundaries (a perfect supercell, as for force constants): every
    pair is found. (Re-wrapping the fractional coordinate 1 − ε → 0 once put an atom on the
    upper face into bin 0 and lost a third of the pairs.)"""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=reps == (4, 4, 4)).repeat(reps)
    spec, graph = allocate(from_atoms(atoms), cutoff, method="cells")
    assert min(spec.bins) >= 2 and not bool(graph.overflow)
    assert _pairs(graph) == _ase_pairs(atoms, cutoff)


def test_overflow_when_capacity_too_small():
    atoms = _triclinic((2, 2, 2))
    system = from_atoms(atoms)
    spec, graph = allocate(system, 4.0, method="brute")
    n_true = int(graph.n_edges)
    small = dataclasses.replace(spec, capacity=n_true - 1)
    g = build(system, small)
    assert bool(g.overflow)
    exact = dataclasses.replace(spec, capacity=n_true)
    g = build(system, exact)
    assert not bool(g.overflow) and _pairs(g) == _ase_pairs(atoms, 4.0)


def test_overflow_when_cell_shrinks():
    """A spec allocated for a large cell must flag a compressed one (more images/ fewer bins needed)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    system = from_atoms(atoms)
    spec, graph = allocate(system, 4.0, capacity_multiplier=20.0, method="brute")
    assert not bool(graph.overflow)
    small = system._replace(positions=system.positions * 0.5, cell=system.cell * 0.5)  # 4/1.8 > 2 images
    assert bool(build(small, spec).overflow)  # capacity suffices, but the image range does not
    # cell list: bins must stay at least one cutoff wide
    big = from_atoms(bulk("Ar", "fcc", a=5.26, cubic=True).repeat((4, 4, 4)))
    spec, graph = allocate(big, 6.0, capacity_multiplier=3.0, method="cells")
    assert not bool(graph.overflow) and spec.bins == (3, 3, 3)
    shrunk = big._replace(positions=big.positions * 0.84, cell=big.cell * 0.84)  # bins 5.9 Å < cutoff
    assert bool(build(shrunk, spec).overflow)
    # bin overflow: all atoms crowded into one bin
    crowded = big._replace(positions=big.positions * 0.2)
    assert bool(build(crowded, spec).overflow)


def test_explain_overflow_names_the_capacity():
    """The overflow message says which static size ran out: edges, a bin, or the geometry."""
    from curvax.neighbors import explain_overflow

    big = from_atoms(bulk("Ar", "fcc", a=5.26, cubic=True).repeat((4, 4, 4)))
    spec, _ = allocate(big, 6.0, method="cells")
    assert "no capacity is exceeded" in explain_overflow(big, spec)
    assert "edge capacity" in explain_overflow(big, dataclasses.replace(spec, capacity=10))
    crowded = big._replace(positions=big.positions * 0.2)
    assert "bin capacity" in explain_overflow(crowded, spec)
    shrunk = big._replace(positions=big.positions * 0.84, cell=big.cell * 0.84)
    assert "too thin" in explain_overflow(shrunk, spec)


@pytest.mark.parametrize("strain", [0.0, 0.004])
def test_skin_reuse_equals_fresh_lists(strain):
    """Calculator with a skin (on a half list, as for every pair potential): after many small
    moves (and a slowly deforming cell) the forces and stress equal a fresh full-list computation
    to 1e-12 (float64), the list is reused on most calls and rebuilt when `needs_rebuild` says so."""
    from curvax.calculator import calculator, compute
    from curvax.potentials import LennardJones

    pot = LennardJones(sigma=3.405, epsilon=0.0103, cutoff=7.0, r_inner=6.0)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    system = from_atoms(atoms)
    calc = calculator(pot, skin=1.0)
    state = calc.init(system)
    rng = np.random.default_rng(0)
    x, cell, rebuilt = np.asarray(system.positions), np.asarray(system.cell), []
    for k in range(30):
        x = x + rng.normal(scale=0.03, size=x.shape)  # random walk: ≈ 0.16 Å rms drift after 30 steps
        deform = np.eye(3) + strain * np.diag([1.0, -0.5, 0.3])
        x, cell = x @ deform, cell @ deform
        moved = system._replace(positions=x, cell=cell)
        res, state = calc.apply(moved, state)
        assert not bool(res["overflow"])
        rebuilt.append(bool(res["rebuilt"]))
        ref, _ = compute(pot, moved, half_list=False)  # a fresh full list; the calculator keeps a half one
        np.testing.assert_allclose(np.asarray(res["forces"]), ref["forces"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(res["stress"]), ref["stress"], rtol=0, atol=1e-12)
    assert 1 <= sum(rebuilt) <= 15, rebuilt


def test_jit_rebuild_follows_motion():
    """`build` under jit with a static spec re-finds neighbours after atoms move."""
    atoms = bulk("Ar", "fcc", a=5.26).repeat((6, 6, 6))
    cutoff = 6.0
    system = from_atoms(atoms)
    spec, _ = allocate(system, cutoff, capacity_multiplier=1.5)
    rebuild = jax.jit(build, static_argnums=1)
    for seed in (3, 4):
        moved = atoms.copy()
        moved.rattle(0.3, seed=seed)
        g = rebuild(from_atoms(moved), spec)
        assert not bool(g.overflow)
        assert _pairs(g) == _ase_pairs(moved, cutoff)
    assert rebuild._cache_size() == 1  # one compile for all rebuilds


def test_molecule_non_periodic():
    atoms = molecule("CH3CH2OH")
    assert not any(atoms.pbc)
    cutoff = 2.0
    system = from_atoms(atoms)
    spec, graph = allocate(system, cutoff)
    assert spec.method == "brute" and not bool(graph.overflow)
    ref = _ase_pairs(atoms, cutoff)
    assert _pairs(graph) == ref and all(p[2:] == (0, 0, 0) for p in ref)
    # a molecule far from the origin and beyond any (zero) cell still works
    far = Atoms(atoms.numbers, atoms.positions + 57.3, pbc=False)
    assert _pairs(allocate(from_atoms(far), cutoff)[1]) == ref


def test_padded_edges_are_long():
    atoms = _triclinic((1, 1, 1))
    system = from_atoms(atoms)
    spec, graph = allocate(system, 3.0, capacity_multiplier=2.0)
    pad = ~np.asarray(graph.mask)
    assert pad.any()
    r = np.asarray(edge_vectors(system.positions, system.cell, graph))
    assert np.all(np.linalg.norm(r[pad], axis=1) > 100.0)
