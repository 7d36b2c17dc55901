"""Phonon fine-tuning: training reduces the force-constant error, resume reproduces the
uninterrupted run, co-training bounds forgetting; the Nequix pipeline end to end."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from conftest import NEQUIX_MP, PHONONS, RELAX

from curvax import LennardJones, batch as batching
from curvax.config import load_config
from curvax.finetune import efs_data, pft as finetune, training
from curvax.batch import graph_of
from curvax.hessian import hessian
from curvax.finetune.evaluation import efs_errors
from curvax.relax.data import perturb
from curvax.system import from_atoms

BASE = LennardJones(sigma=2.3, epsilon=0.1, cutoff=5.0, smooth=True)
TARGET = LennardJones(sigma=2.3, epsilon=0.13, cutoff=5.0, smooth=True)  # the toy's "DFT": stiffer


def _toy_data(n_up=6, n_hold=4):
    """Phonon batch (2 Cu cells, FC of TARGET) and pseudo-labelled upstream frames of BASE."""
    rng = np.random.default_rng(0)
    items, fcs = [], []
    for reps, a in (((2, 1, 1), 3.55), ((1, 1, 1), 3.6)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True) * reps
        s = from_atoms(atoms)
        g = graph_of(s, BASE.cutoff)
        items.append((s, g, dict(forces=np.zeros((len(atoms), 3)))))
        fcs.append(np.asarray(hessian(TARGET, s, g)))
    phonon = batching.stack(batching.pad_all(items))
    n = phonon.system.positions.shape[1]
    fc = np.zeros((2, n, n, 3, 3))
    for k, f in enumerate(fcs):
        fc[k, : len(f), : len(f)] = f
    frames = []
    for k in range(n_up + n_hold):
        s = from_atoms(perturb(bulk("Cu", "fcc", a=3.6, cubic=True), 0.08, 0.03, rng))
        frames.append((s, graph_of(s, BASE.cutoff), {}))
    up = efs_data.pseudo_label(BASE, batching.stack(batching.pad_all(frames)))
    return phonon, jnp.asarray(fc), batching.take(up, np.arange(n_up)), batching.take(up, np.arange(n_up, n_up + n_hold))


def _buckets(phonon, fc, split=False):
    """The toy's phonon structures as one `PhononBucket`, or (split) one bucket each, padded
    to its own size (as `load_phonon_training_set` with n_buckets=2)."""
    if not split:
        return [finetune.PhononBucket(np.arange(fc.shape[0]), phonon, fc)]
    out = []
    for k in range(fc.shape[0]):
        s = batching.take(phonon, k)
        n = int(s.node_mask.sum())
        system = s.system._replace(positions=s.system.positions[:n], numbers=s.system.numbers[:n])
        one = batching.pad_structure(system, s.graph, n, int(s.graph.mask.sum()), forces=s.forces[:n])
        out.append(finetune.PhononBucket(np.array([k]), batching.stack([one]), fc[k:k + 1, :n, :n]))
    return out


def _fit(tmp, k_up, steps, buckets, up, lr=2e-3):
    """`fit` of the PFT step (phonon-only when k_up = 0) from BASE; MAE losses, Adam; phonon
    batches of 2 from one bucket, else 1 per bucket."""
    cfg = finetune.FinetuneConfig(model="toy", upstream_steps_per_phonon_step=k_up,
                                  phonon_batch_size=min(len(b.index) for b in buckets),
                                  upstream_batch_size=2, w_phonon_efs=(0.0, 0.0, 0.0))
    opt = training.make_optimizer(training.OptimizerConfig(learning_rate=lr, grad_clip=None))
    state, static = training.init_state(BASE, opt)
    step_fn = finetune.make_step_fn(cfg, buckets, up, opt)
    state = training.fit(state, static, step_fn, steps, tmp, checkpoint_every=1, progress=False)
    return state, static


def _fc_error(pot, phonon, fc):
    """Mean |H − Φ| over the real atoms of every structure [eV/Å²] (dense Hessians)."""
    errs = []
    for k in range(fc.shape[0]):
        s = batching.take(phonon, k)  # integer index: one unbatched structure
        m = np.asarray(s.node_mask)
        h = np.asarray(hessian(pot, s.system, s.graph))[m][:, m]
        errs.append(np.abs(h - np.asarray(fc[k])[m][:, m]).mean())
    return float(np.mean(errs))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Also with the phonon structures in two shape buckets (one compiled step each)."""
    phonon, fc, up, _ = _toy_data()
    buckets = _buckets(phonon, fc, split=True)
    assert [b.structures.system.positions.shape[1] for b in buckets] == [8, 4]
    full, _ = _fit(tmp_path / "a", 1, 6, buckets, up)
    _fit(tmp_path / "b", 1, 3, buckets, up)  # "killed" after 3 steps (last checkpoint)
    resumed, _ = _fit(tmp_path / "b", 1, 6, buckets, up)
    assert int(resumed.step) == int(full.step) == 12  # optimizer updates: (1 phonon + 1 upstream) × 6
    assert training.checkpoint_step(tmp_path / "b" / "checkpoint.eqx") == 6
    for a, b in zip(jax.tree.leaves(full.params) + jax.tree.leaves(full.ema),
                    jax.tree.leaves(resumed.params) + jax.tree.leaves(resumed.ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a = training.read_metrics(tmp_path / "a" / "metrics.csv")
    rows_b = training.read_metrics(tmp_path / "b" / "metrics.csv")
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == list(range(1, 7))
    assert rows_a[-1]["phonon_loss"] == rows_b[-1]["phonon_loss"]


def test_pft_reduces_fc_error_and_cotraining_bounds_forgetting(tmp_path):
    """The toy's phonon data want a 30 % stiffer potential than its upstream data (pseudo-labels
    of BASE). Phonon-only training matches the target force constants (error −90 %) and forgets
    the upstream forces (> 50 meV/Å); with the recipe's co-training (k = 2, E/F/σ weights
    500/200/50 vs Hessian 100) the held-out upstream force error stays below 5 meV/Å."""
    phonon, fc, up, hold = _toy_data()
    only, static = _fit(tmp_path / "only", 0, 40, _buckets(phonon, fc), up, lr=1e-2)
    co, _ = _fit(tmp_path / "co", 2, 40, _buckets(phonon, fc), up, lr=1e-2)
    models = {"base": BASE, "only": training.combine(only.params, static), "co": training.combine(co.params, static)}
    err = {k: _fc_error(m, phonon, fc) for k, m in models.items()}
    assert err["only"] < 0.1 * err["base"]
    assert err["co"] <= err["base"]
    f = efs_errors(models, hold)
    assert f["base"]["forces"] < 1e-12  # pseudo-labels are the base model's own forces
    assert f["only"]["forces"] > 0.05
    assert f["co"]["forces"] < 0.005


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    for line, message in (("learning_rate: 1", "unknown config keys.*learning_rate"),
                          ("optimizer: {lr: 1}", "unknown optimizer keys.*lr"),
                          ("remat_edges: true", "bad.yaml: remat_edges must be int"),
                          ("remat_edges: -1", "bad.yaml: remat_edges must be ≥ 0"),
                          ("phonon_geometry: relaxed", "bad.yaml: phonon_geometry must be one of"),
                          ("phonon_cell: primitive", "bad.yaml: phonon_cell must be one of"),
                          ("model_volume_fraction: 2", "bad.yaml: model_volume_fraction must be in"),
                          ("devices: 0", "bad.yaml: devices must be 'all' or a positive integer")):
        bad.write_text(f"model: x.nqx\n{line}\n")
        with pytest.raises(ValueError, match=message):
            load_config(bad, finetune.FinetuneConfig)
    # more devices than there are: refused by `run` before any data is read (the config check
    # starts no JAX backend, so the data readers can still be forked after it)
    bad.write_text(f"model: lj\ndevices: 999\nworkdir: {tmp_path / 'run'}\nphonon_train: [{PHONONS / 'Cr'}]\n")
    cfg = load_config(bad, finetune.FinetuneConfig)
    with pytest.raises(ValueError, match="devices: 999 requested"):
        finetune.run(cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", finetune.FinetuneConfig)
    cfg = finetune.FinetuneConfig(model="x", phonon_train=[str(PHONONS / "Cr")], phonon_test=[str(PHONONS / "Cr")])
    with pytest.raises(ValueError, match="phonon_test overlaps phonon_train"):
        finetune._check_held_out(cfg)


def _cr_fc_error(potential):
    from curvax.phonons.fc2 import force_constants
    from curvax.phonons.data import load_phonopy_dataset

    dft = load_phonopy_dataset(PHONONS / "Cr")
    return float(np.abs(force_constants(dft, potential, assign=False).force_constants - dft.force_constants).mean())


@pytest.mark.slow
def test_nequix_pft_cli_end_to_end(tmp_path, nequix32):
    """`curvax finetune` on DFT Cr (co-trained on pseudo-labels): the Cr force-constant error
    drops, the held-out upstream force drift stays below 20 meV/Å, the saved model loads with
    both curvax and nequix, and the report covers the held-out material."""
    import json

    from nequix.model import load_model

    from curvax.cli import main
    from curvax.potentials import load_potential

    cfg = tmp_path / "pft.yaml"
    cfg.write_text(f"""
model: {NEQUIX_MP}
workdir: {tmp_path / 'run'}
phonon_train: [{PHONONS / 'Cr'}]
phonon_test: [{PHONONS / 'spacegroups' / 'POSCAR_P-62m'}]
pseudo_label_structures: {RELAX / 'wbm-random-pbe52-equilibrium-2025.1.json.gz'}
max_pseudo_atoms: 3
n_pseudo: 4
n_holdout: 2
n_relax_eval: 1
steps: 4
upstream_steps_per_phonon_step: 1
phonon_batch_size: 1
upstream_batch_size: 2
optimizer: {{learning_rate: 1.0e-3}}
ema_decay: 0.0
checkpoint_every: 2
eval_protocols: [unrelaxed]
""")
    assert main(["finetune", str(cfg)]) == 0
    run = tmp_path / "run"
    tuned = load_potential(str(run / "model.nqx"))
    before, after = _cr_fc_error(nequix32), _cr_fc_error(tuned)
    assert after < 0.9 * before, (before, after)
    report = json.loads((run / "report.json").read_text())
    assert {r["material"] for r in report["phonons"]} == {"P-62m"}
    assert report["upstream_holdout"]["fine-tuned"]["forces"] < 0.02
    assert (run / "report.png").stat().st_size > 1000
    rows = training.read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the saved file is a plain nequix model
    with jax.enable_x64(False):  # the file is float32, as nequix writes it
        loaded, _ = load_model(str(run / "model.nqx"))
    a = jax.tree.leaves(eqx.filter(loaded, eqx.is_inexact_array))
    b = jax.tree.leaves(eqx.filter(tuned.model, eqx.is_inexact_array))
    assert len(a) == len(b) > 0
    assert any(not np.array_equal(x, y) for x, y in zip(b, jax.tree.leaves(eqx.filter(nequix32.model, eqx.is_inexact_array))))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_model_volume_geometry_scales_the_dft_supercell_to_zero_model_pressure():
    """phonon_geometry "model_volume": the DFT supercell is scaled isotropically (fractional
    coordinates kept) to the potential's zero pressure of the unit cell; the DFT force
    constants are unchanged; "dft" keeps the DFT geometry; anything else is an error."""
    from curvax import compute
    from curvax.phonons.convert import phonopy_to_atoms
    from curvax.phonons.data import load_phonopy_dataset
    from curvax.relax import scaled_cell

    lj = LennardJones(sigma=2.2, epsilon=0.1, cutoff=5.5, smooth=True)  # not Cr's lattice
    dft = load_phonopy_dataset(PHONONS / "Cr")
    n = len(dft.supercell)
    [ref] = finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 64, lj, "dft")[1]
    [vol] = finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 64, lj, "model_volume")[1]
    np.testing.assert_array_equal(vol.fc, ref.fc)
    ref, vol = ref.structures, vol.structures
    x_ref = np.asarray(ref.system.positions[0, :n])
    np.testing.assert_allclose(x_ref, dft.supercell.positions, atol=1e-12)
    cell_ref, cell_vol = np.asarray(ref.system.cell[0]), np.asarray(vol.system.cell[0])
    s = cell_vol[0, 0] / cell_ref[0, 0]
    assert abs(s - 1) > 0.01  # the toy's equilibrium is not Cr's
    np.testing.assert_allclose(cell_vol, s * cell_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(vol.system.positions[0, :n]), s * x_ref, atol=1e-10)
    unit = scaled_cell(phonopy_to_atoms(dft.unitcell), s)
    assert abs(np.asarray(compute(lj, from_atoms(unit))[0]["stress"])[:3].mean()) < 1e-4  # eV/Å³
    [half] = finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 64, lj, "model_volume", 0.5)[1]
    np.testing.assert_allclose(np.asarray(half.structures.system.cell[0]), np.sqrt(s) * cell_ref, rtol=1e-10)  # lattice × s^½
    with pytest.raises(ValueError, match="phonon_geometry"):
        finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 64, lj, "relaxed")


def test_unitcell_training_structures_carry_the_folded_force_constants():
    """phonon_cell "unitcell": the unit cell (bcc Cr, 2 atoms) with the DFT force constants
    folded onto it (Σ over the supercell images of each atom), and the sum rule kept; the unit
    cell counts against max_atoms, not the supercell."""
    from curvax.phonons.data import load_phonopy_dataset
    from curvax.phonons.fc2 import unitcell_force_constants

    lj = LennardJones(sigma=2.2, epsilon=0.1, cutoff=5.5, smooth=True)
    dft = load_phonopy_dataset(PHONONS / "Cr")
    names, [bucket] = finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 2, lj, cell="unitcell")
    unit, fc = bucket.structures, bucket.fc
    assert names == ["Cr"] and unit.system.positions.shape[1] == len(dft.unitcell) == 2
    np.testing.assert_allclose(np.asarray(unit.system.positions[0]), dft.unitcell.positions, atol=1e-12)
    np.testing.assert_allclose(fc[0], unitcell_force_constants(dft), atol=1e-12)
    np.testing.assert_allclose(fc[0].sum(axis=1), 0.0, atol=1e-8)
    by_hand = sum(dft.force_constants[0, j] for j in range(len(dft.supercell))
                  if np.asarray(dft.supercell.s2u_map)[j] == np.asarray(dft.supercell.u2s_map)[1])
    np.testing.assert_allclose(fc[0, 0, 1], by_hand, atol=1e-12)
    with pytest.raises(ValueError, match="no phonon training data"):
        finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 1, lj, cell="unitcell")
    with pytest.raises(ValueError, match="phonon_cell"):
        finetune.load_phonon_training_set([PHONONS / "Cr"], lj.cutoff, 64, lj, cell="primitive")


def test_shape_buckets_hold_the_same_structures_and_force_constants():
    """n_buckets=2 over the unit cells of Cr (2 atoms) and NaCl (8 atoms): each in its own bucket,
    padded to its own size, with the same positions and folded force constants as in one
    bucket padded to the larger; together the buckets index every structure once."""
    lj = LennardJones(sigma=2.2, epsilon=0.1, cutoff=5.5, smooth=True)
    paths = [PHONONS / "Cr", PHONONS / "NaCl"]
    names, [one] = finetune.load_phonon_training_set(paths, lj.cutoff, 8, lj, cell="unitcell")
    names2, two = finetune.load_phonon_training_set(paths, lj.cutoff, 8, lj, cell="unitcell", n_buckets=2)
    assert names == names2 == ["Cr", "NaCl"] and len(two) == 2
    assert sorted(int(b.index[0]) for b in two) == [0, 1]
    assert [b.structures.system.positions.shape[1] for b in two] == [2, 8]  # the smaller first
    for b in two:
        k, n = int(b.index[0]), b.structures.system.positions.shape[1]
        np.testing.assert_array_equal(np.asarray(b.structures.system.positions[0]),
                                      np.asarray(one.structures.system.positions[k, :n]))
        np.testing.assert_array_equal(b.fc[0], one.fc[k, :n, :n])
        assert int(b.structures.graph.mask.sum()) == int(one.structures.graph.mask[k].sum())


def test_upstream_files_split_into_training_and_held_out_frames(tmp_path):
    """upstream_files: n_holdout frames held out, the rest for training, each part padded to its
    own largest frame, every frame with the labels of its file (E, F; no stress: NaN)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from curvax import compute

    rng = np.random.default_rng(1)
    frames = []
    for k in range(5):
        atoms = perturb(bulk("Cu", "fcc", a=3.6, cubic=True) * ((2, 1, 1) if k == 0 else (1, 1, 1)), 0.05, 0.0, rng)
        r = compute(BASE, from_atoms(atoms))[0]
        atoms.calc = SinglePointCalculator(atoms, energy=float(r["energy"]), forces=np.asarray(r["forces"]))
        frames.append(atoms)
    ase.io.write(tmp_path / "up.extxyz", frames)
    cfg = finetune.FinetuneConfig(model="toy", upstream_files=[str(tmp_path / "up.extxyz")], n_holdout=2)
    train, held = finetune.load_upstream_set(cfg, BASE, BASE.cutoff)
    assert train.energy.shape[0] == 3 and held.energy.shape[0] == 2
    sizes = sorted([int(n) for n in np.asarray(train.n_atoms)] + [int(n) for n in np.asarray(held.n_atoms)])
    assert sizes == [4, 4, 4, 4, 8]
    for part in (train, held):  # the part without the 8-atom frame is padded to 4, not 8
        assert part.system.positions.shape[1] == int(np.max(np.asarray(part.n_atoms)))
    energies = sorted(np.concatenate([np.asarray(train.energy), np.asarray(held.energy)]))
    np.testing.assert_allclose(energies, sorted(a.get_potential_energy() for a in frames), rtol=1e-12)


def test_training_set_rejects_an_unknown_element_before_reading_the_rest(tmp_path):
    """A data set with an element the model does not know stops the read there, naming it: the
    set after it (an unreadable one) is never read."""

    class NaClModel:  # all the training-set reader asks of a model here: the elements it knows
        elements = (11, 17)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "phonopy_disp.yaml").write_text("not: [a phonopy file\n")
    paths = [PHONONS / "NaCl", PHONONS / "Cr", tmp_path / "broken"]
    with pytest.raises(ValueError, match=r"Cr: element\(s\) Cr \(Z=24\) unknown to the model NaClModel"):
        finetune.load_phonon_training_set(paths, 5.5, 64, NaClModel())


def test_dft_relaxed_frames_measure_errors_against_dft():
    """The report's forgetting-vs-DFT rows: every held-out crystal (none co-trained on) at its
    DFT geometry with its DFT energy and zero F/σ, so `efs_errors` gives |E/N − E_DFT/N| and the
    mean |F| component, as computed directly."""
    from curvax import compute

    cfg = finetune.FinetuneConfig(model="toy", pseudo_label_structures=str(RELAX / "wbm-random-pbe52-equilibrium-2025.1.json.gz"),
                                  max_pseudo_atoms=3)
    train, held = finetune.pseudo_label_pool(cfg, BASE)
    assert not {r.material_id for r in train} & {r.material_id for r in held}
    frames = finetune.dft_relaxed_frames(held, BASE.cutoff)
    assert len(frames.n_atoms) == len(held) > 3
    np.testing.assert_allclose(np.asarray(frames.energy), [r.energy for r in held], rtol=1e-12)
    e_err, f_abs = [], []
    for r in held:
        res = compute(BASE, from_atoms(r.atoms))[0]
        e_err.append(abs(float(res["energy"]) - r.energy) / len(r.atoms))
        f_abs.append(np.mean(np.abs(np.asarray(res["forces"]))))
    got = efs_errors({"m": BASE}, frames)["m"]
    np.testing.assert_allclose(got["energy"], np.mean(e_err), rtol=1e-6)
    np.testing.assert_allclose(got["forces"], np.mean(f_abs), rtol=1e-6)
