"""`curvax relax` and `curvax relax-tune` on Lennard-Jones (float64): relaxed output really is at
fmax; fine-tuning σ from relaxations moves the relaxed structures towards the targets; a run
stopped after one step and resumed reproduces the uninterrupted run; clear config errors."""
import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import read, write

from curvax import from_atoms
from curvax.cli import main
from curvax.config import load_config
from curvax.relax import make_batch, relax_jit, relax_systems
from curvax.relax.data import RelaxPair, perturb, read_pairs, write_pairs
from curvax.potentials import load_potential

RC, SKIN = 2.0, 0.3
MODEL = f"lj:sigma=0.95,epsilon=1.0,cutoff={RC}"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """(perturbed, relaxed with σ* = 1) pairs of fcc / hcp / bcc Ar-like LJ crystals."""
    structs = [bulk("Ar", "fcc", a=1.5, cubic=True), bulk("Ar", "hcp", a=1.1, c=1.8), bulk("Ar", "bcc", a=1.3)]
    r = relax_jit(load_potential(f"lj:sigma=1.0,cutoff={RC}"), make_batch([from_atoms(s) for s in structs], RC, SKIN),
                  cell=True, steps=300, fmax=1e-6, skin=SKIN)
    assert bool(np.all(r.converged))
    pairs = []
    for k, s in enumerate(structs):
        final = s.copy()
        final.positions, final.cell = np.asarray(r.positions[k, :len(s)]), np.asarray(r.cell[k])
        pairs.append(RelaxPair(f"lj-{k}", perturb(final, 0.03, 0.02, k), final, float(r.energy[k])))
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.extxyz", pairs)


def test_relax_cli_reaches_fmax(tmp_path):
    from ase.calculators.lj import LennardJones as AseLJ

    start = [bulk("Ar", "fcc", a=1.5, cubic=True), bulk("Ar", "bcc", a=1.3)]
    start[0].positions += np.random.default_rng(0).normal(0, 0.03, (4, 3))
    write(tmp_path / "start.extxyz", start)
    out = tmp_path / "relaxed.extxyz"
    assert main(["--x64", "relax", str(tmp_path / "start.extxyz"), "--model", f"lj:cutoff={RC}", "--cell",
                 "--fmax", "1e-4", "--skin", str(SKIN), "--out", str(out), "--no-progress"]) == 0
    frames = read(out, ":")
    assert len(frames) == 2 and all(f.info["converged"] for f in frames)
    for f in frames:  # independent check with ASE's own LJ calculator
        f.calc = AseLJ(sigma=1.0, epsilon=1.0, rc=RC, smooth=True)
        assert np.abs(f.get_forces()).max() < 1e-4
        assert np.abs(f.get_stress()).max() * f.get_volume() / len(f) < 1e-4
    assert main(["relax", str(tmp_path / "missing.xyz"), "--model", "lj"]) == 2


def _config(path, pairs_file, workdir, **kw):
    cfg = dict(model=MODEL, data=str(pairs_file), workdir=str(workdir), split=[1.0, 0.0, 0.0], steps=4,
               batch_size=2, relax_steps=40, fmax=1e-4, grad_mode="bptt", skin=SKIN, x64=True,
               optimizer={"name": "adam", "learning_rate": 0.01, "grad_clip": None}, ema_decay=0.0,
               checkpoint_every=1, eval_relax_steps=300)
    cfg.update(kw)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(workdir):
    with open(workdir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_relax_tune_cli_improves_and_resumes(tmp_path, pairs_file):
    cfg = _config(tmp_path / "cfg.yaml", pairs_file, tmp_path / "run")
    # killed after one step (time limit), then resumed to the end
    assert main(["relax-tune", str(cfg), "--max-seconds", "0", "--no-progress"]) == 0
    first = _rows(tmp_path / "run")
    assert len(first) == 1 and not (tmp_path / "run" / "model.json").exists()
    assert main(["relax-tune", str(cfg), "--no-progress"]) == 0
    rows = _rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[0] == first[0]
    sigma = json.loads((tmp_path / "run" / "model.json").read_text())["sigma"]
    assert 0.95 < sigma <= 1.0  # moved towards σ* = 1 from relaxations alone
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # fine-tuned relaxations (full, to fmax) are closer to the targets than the base model's
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert ev["before"]["converged"] == 1.0 and ev["after"]["converged"] == 1.0
    assert ev["after"]["abs_volume_error"] < 0.6 * ev["before"]["abs_volume_error"]
    # (internal coordinates of fcc/hcp/bcc are fixed by symmetry: the signal is in the lattice)
    assert ev["forgetting"]["energy_change_eV_per_atom"] > 0  # the model did change
    # relaxed LJ volumes scale as σ³: with σ closer to σ* every structure's volume is closer
    assert ev["change"]["fraction_volume_error_improved"] == 1.0
    b = ev["before"]["per_structure"]
    # evaluated one structure at a time (padded to the largest, graph following the atoms): the
    # base model's steps are those of each relaxed alone
    starts = [from_atoms(q.initial) for q in read_pairs(tmp_path / "run" / f"pairs-{ev['eval_set']}.extxyz")]
    alone = [int(relax_systems(load_potential(MODEL), [x], cell=True, steps=300, fmax=1e-4, skin=SKIN,
                               chunk=300)[1]["n_steps"][0]) for x in starts]
    assert alone == b["steps"] and len(set(alone)) > 1
    # "in basin": the fraction of relaxations ending within basin_threshold (default 0.05 Å) of D_q
    for k in ("before", "after"):
        assert ev[k]["in_basin"] == np.mean(np.asarray(ev[k]["per_structure"]["rms_displacement"]) < 0.05)
    # a finished run re-evaluates under other evaluation settings; other changes are refused
    strict = _config(tmp_path / "strict.yaml", pairs_file, tmp_path / "run", basin_threshold=1e-9)
    assert main(["relax-tune", str(strict), "--no-progress"]) == 0
    after = json.loads((tmp_path / "run" / "evaluation.json").read_text())["after"]
    assert after["in_basin"] == np.mean(np.asarray(after["per_structure"]["rms_displacement"]) < 1e-9) < 1.0
    assert main(["relax-tune", str(_config(tmp_path / "lr.yaml", pairs_file, tmp_path / "run", rattle=0.2))]) == 2


def test_relax_tune_config_errors(tmp_path, pairs_file):
    from curvax.finetune.relax_tune import RelaxTuneConfig, run

    bad = _config(tmp_path / "bad.yaml", pairs_file, tmp_path / "w", learning_rate=1.0)
    assert main(["relax-tune", str(bad)]) == 2
    with pytest.raises(ValueError, match="unknown config keys.*learning_rate"):
        load_config(bad, RelaxTuneConfig)
    with pytest.raises(ValueError, match="grad_mode"):
        load_config(_config(tmp_path / "g.yaml", pairs_file, tmp_path / "w", grad_mode="magic"), RelaxTuneConfig)
    with pytest.raises(ValueError, match="unknown Lennard-Jones parameter 'rho'"):
        load_potential("lj:rho=1")
    with pytest.raises(FileNotFoundError, match="nope.extxyz"):
        run(load_config(_config(tmp_path / "c.yaml", tmp_path / "nope.extxyz", tmp_path / "w"), RelaxTuneConfig),
            progress=False)


def test_dq_is_the_mass_weighted_rms_displacement():
    """D_q = √(Σ m_i |Δ_i − Δ̄|² / Σ m_i) by hand, with Δ̄ the mass-weighted mean displacement."""
    from curvax.relax.metrics import dq_loss, rms_displacement

    cell = np.eye(3) * 5.0
    ref = np.array([[0.0, 0.0, 0.0], [2.5, 2.5, 2.5]])
    delta = np.array([[0.1, 0.0, 0.0], [0.0, -0.2, 0.05]])
    numbers = np.array([1, 8])  # H and O: unequal masses
    m = np.array([1.008, 15.999])
    d = delta - (m[:, None] * delta).sum(0) / m.sum()
    by_hand = np.sqrt((m * (d ** 2).sum(1)).sum() / m.sum())
    args = (ref + delta + 5.0 * np.array([1, 0, 0]), cell, ref, cell, numbers, np.array([True, True]))
    assert float(rms_displacement(*args)) == pytest.approx(by_hand, rel=1e-12)  # periodic image, too
    assert float(dq_loss(*args)) == pytest.approx(by_hand, rel=1e-9)
    shifted = (args[0] + 0.3,) + args[1:]  # a rigid translation is not a displacement
    assert float(rms_displacement(*shifted)) == pytest.approx(by_hand, rel=1e-9)


def _sd_vacancy_setup(tmp_path):
    """LJ fcc vacancy (31 atoms) relaxed with σ* = 1 as the target; start: rattled target."""
    from curvax.finetune.relax_tune import PairSet, Relaxation, RelaxTuneConfig, make_loss

    s = bulk("Ar", "fcc", a=1.55, cubic=True).repeat(2)
    del s[0]
    r = relax_jit(load_potential(f"lj:sigma=1.0,cutoff={RC}"), make_batch([from_atoms(s)], RC, SKIN),
                  steps=500, fmax=1e-8, skin=SKIN)
    target = s.copy()
    target.positions = np.asarray(r.positions[0])
    start = perturb(target, 0.04, 0.0, 1)
    pairs = PairSet(make_batch([from_atoms(start)], RC, SKIN), make_batch([from_atoms(target)], RC, SKIN),
                    jnp.zeros(1))
    cfg = RelaxTuneConfig(model=MODEL, data="-", method="sd", learn_step_size=True, relax_steps=12, fmax=1e-12,
                          cell=False, grad_mode="bptt", skin=SKIN, relaxer={"step_size": 0.002, "max_step": 10.0},
                          weights={"dq": 1.0, "displacement": 0.0, "lattice": 0.0, "volume": 0.0})
    model = Relaxation(load_potential(MODEL, jnp.float64), jnp.log(jnp.asarray(0.002)))
    return cfg, model, pairs, make_loss(cfg)


def test_sd_learned_step_size_and_model_gradients_match_finite_differences(tmp_path):
    import equinox as eqx

    cfg, model, pairs, loss_fn = _sd_vacancy_setup(tmp_path)
    f = jax.jit(lambda m: loss_fn(m, pairs, None)[0])
    grads = eqx.filter_grad(lambda m: loss_fn(m, pairs, None)[0])(model)
    assert float(f(model)) > 1e-3  # σ = 0.95 relaxes away from the σ* = 1 structure
    h = 1e-5
    for where, g in ((lambda m: m.log_step_size, grads.log_step_size),
                     (lambda m: m.potential.sigma, grads.potential.sigma)):
        x = where(model)
        fd = (f(eqx.tree_at(where, model, x + h)) - f(eqx.tree_at(where, model, x - h))) / (2 * h)
        assert float(g) == pytest.approx(float(fd), rel=1e-6, abs=1e-10)
        assert abs(float(g)) > 1e-4  # both parameters change the end point


@pytest.mark.parametrize("grad_mode", ["bptt", "hybrid"])
def test_relax_tune_learns_the_step_size(tmp_path, grad_mode):
    """Also with the hybrid gradient, whose tail model steps with the learned η."""
    from curvax.finetune.relax_tune import RelaxTuneConfig

    cfg, model, pairs, _ = _sd_vacancy_setup(tmp_path)
    target = pairs.target.system
    records = []
    for k in range(2):  # two rattled starts of the relaxed vacancy
        final = bulk("Ar", "fcc", a=1.55, cubic=True).repeat(2)
        del final[0]
        final.positions = np.asarray(target.positions[0, :31])
        records.append(RelaxPair(f"vac-{k}", perturb(final, 0.04, 0.0, 10 + k), final, 0.0))
    data = write_pairs(tmp_path / "vac.extxyz", records)
    yml = _config(tmp_path / "sd.yaml", data, tmp_path / "sd", method="sd", learn_step_size=True,
                  step_size_learning_rate=0.1, cell=False, relax_steps=8, relaxer={"step_size": 0.0005},
                  weights={"dq": 1.0, "displacement": 0.0, "lattice": 0.0, "volume": 0.0}, steps=3,
                  eval_relax_steps=8, grad_mode=grad_mode, hybrid_unrolled_steps=4)
    assert main(["relax-tune", str(yml), "--no-progress"]) == 0
    ev = json.loads((tmp_path / "sd" / "evaluation.json").read_text())
    # 8 steps of η = 5e-4 Å²/eV stop short of the minimum: a larger η lowers D_q, Adam raises it,
    # and the fine-tuned model's evaluation relaxes with the learned η
    assert ev["step_size"]["initial"] == 0.0005 and ev["step_size"]["learned"] > 0.0005 * 1.2
    assert ev["after"]["rms_displacement"] < ev["before"]["rms_displacement"]
    rows = _rows(tmp_path / "sd")
    assert float(rows[-1]["step_size"]) > float(rows[0]["step_size"])
    with pytest.raises(ValueError, match="learn_step_size needs method: sd"):
        load_config(_config(tmp_path / "f.yaml", data, tmp_path / "w", learn_step_size=True), RelaxTuneConfig)


def test_force_anchor_is_the_base_force_msd_with_exact_gradients(tmp_path, pairs_file):
    """`anchor_weight` adds w_F · mean |F_θ − F_base|² over the real atoms of the starts: zero at
    the base model, the hand-computed force difference elsewhere, gradients = finite
    differences; and in a run it keeps the fine-tuned forces nearer the base model's."""
    import dataclasses

    import equinox as eqx

    from curvax import compute
    from curvax.finetune.relax_tune import Relaxation, make_loss

    cfg, model, pairs, plain_loss = _sd_vacancy_setup(tmp_path)
    f_base = np.asarray(compute(model.potential, from_atoms(_start_atoms(pairs)))[0]["forces"])
    anchored = pairs._replace(base_forces=jnp.zeros_like(pairs.start.system.positions).at[0, :31].set(f_base))
    loss_fn = make_loss(dataclasses.replace(cfg, anchor_weight=50.0))
    loss0, m0 = loss_fn(model, anchored, None)
    assert float(m0["anchor_force_rms"]) < 1e-12 and float(loss0) == pytest.approx(float(plain_loss(model, pairs, None)[0]), rel=1e-12)
    other = Relaxation(load_potential("lj:sigma=1.0,epsilon=1.0,cutoff=2.0", jnp.float64), model.log_step_size)
    f_other = np.asarray(compute(other.potential, from_atoms(_start_atoms(pairs)))[0]["forces"])
    by_hand = np.sqrt(np.mean((f_other - f_base) ** 2))
    assert by_hand > 1e-2
    assert float(loss_fn(other, anchored, None)[1]["anchor_force_rms"]) == pytest.approx(by_hand, rel=1e-10)
    f = jax.jit(lambda m: loss_fn(m, anchored, None)[0])
    g = eqx.filter_grad(lambda m: loss_fn(m, anchored, None)[0])(other).potential.sigma
    h = 1e-5
    fd = (f(eqx.tree_at(lambda m: m.potential.sigma, other, other.potential.sigma + h))
          - f(eqx.tree_at(lambda m: m.potential.sigma, other, other.potential.sigma - h))) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=1e-6)

    drift = {}
    for w in (0.0, 100.0):
        yml = _config(tmp_path / f"a{w}.yaml", pairs_file, tmp_path / f"a{w}", anchor_weight=w, steps=3)
        assert main(["relax-tune", str(yml), "--no-progress"]) == 0
        ev = json.loads((tmp_path / f"a{w}" / "evaluation.json").read_text())
        drift[w] = ev["forgetting"]["force_change_mae_eV_A"]
    assert drift[0.0] > 1e-3 and drift[100.0] < 0.5 * drift[0.0]
    assert "anchor_force_rms" in _rows(tmp_path / "a100.0")[0]


def _start_atoms(pairs):
    """The (single) start structure of a `PairSet` as ase.Atoms (31-atom vacancy cell)."""
    from ase import Atoms

    s = pairs.start.system
    return Atoms(numbers=np.asarray(s.numbers[0, :31]), positions=np.asarray(s.positions[0, :31]),
                 cell=np.asarray(s.cell[0]), pbc=True)
