"""Leave-materials-out cross-validation: folds by formula that partition the training
materials, a fold never trained on, the CLI end to end with resume and the stored report."""
import dataclasses
import json
from pathlib import Path

import pytest
from conftest import NEQUIX_MP, PHONONS, RELAX

from curvax.config import load_config
from curvax.finetune import crossval, pft
from curvax.phonons.data import phonondb_entries

CONFIG = Path(__file__).parents[2] / "configs" / "pft-nequix-mp.yaml"


def test_folds_partition_the_main_jobs_training_materials_by_formula():
    cfg = load_config(CONFIG, pft.FinetuneConfig, {})
    train = pft.data_split(cfg)["train"]
    folds = pft.material_folds(train, 3, cfg.phonondb)
    assert sorted(map(str, sum(folds, []))) == sorted(map(str, train))  # every material in exactly one fold
    formula = {e.path: pft._reduced_formula(e.formula) for e in phonondb_entries(cfg.phonondb)}
    per_fold = [{formula[p] for p in f} for f in folds]
    assert not (per_fold[0] & per_fold[1] or per_fold[0] & per_fold[2] or per_fold[1] & per_fold[2])
    assert max(map(len, per_fold)) - min(map(len, per_fold)) <= 1
    again = pft.material_folds(list(reversed(train)), 3, cfg.phonondb)
    assert [sorted(map(str, f)) for f in again] == [sorted(map(str, f)) for f in folds]  # not the input order
    held = dataclasses.replace(cfg, cv_fold=[1, 3])
    split = pft.data_split(held)
    assert split["cv"] == folds[1]
    assert set(split["train"]) == set(folds[0]) | set(folds[2])
    assert set(split["test"]) == set(pft.data_split(cfg)["test"])


def test_cv_fold_must_name_a_fold(tmp_path):
    cfg = tmp_path / "bad.yaml"
    for fold in ("[3, 3]", "[0, 1]", "[1]"):
        cfg.write_text(f"model: {NEQUIX_MP}\ncv_fold: {fold}\n")
        with pytest.raises(ValueError, match="cv_fold must be"):
            load_config(cfg, pft.FinetuneConfig, {})


def test_cross_validation_refuses_restart_and_one_fold(tmp_path, capsys):
    from curvax.cli import main

    cfg = tmp_path / "pft.yaml"
    cfg.write_text(f"model: {NEQUIX_MP}\nworkdir: {tmp_path / 'run'}\n")
    assert main(["finetune", str(cfg), "--cv", "2", "--restart"]) == 2
    assert "--restart does not apply to --cv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["finetune", str(cfg), "--cv", "1"])
    assert e.value.code == 2 and "--cv: '1' must be ≥ 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cross_validation_cli_end_to_end(tmp_path, capsys, small_nequix):
    """Two folds of two materials: each fold's model is trained on the other material only and
    scored on its own; a second call resumes from the stored rows (no training); rows missing
    are scored with the stored models, identical to the first scoring (no training); a changed
    recipe is refused naming the setting and the folder to delete; the stored report belongs to
    this recipe only. A toy-size Nequix (`small_nequix`): the machinery, not the model's numbers,
    is under test here (the real model's CLI run: test_pft.py)."""
    from curvax.cli import main

    cfg = tmp_path / "pft.yaml"
    cfg.write_text(f"""
model: {small_nequix}
workdir: {tmp_path / 'run'}
phonon_train: [{PHONONS / 'Cr'}, {PHONONS / 'spacegroups' / 'POSCAR_P-62m'}]
pseudo_label_structures: {RELAX / 'wbm-random-pbe52-equilibrium-2025.1.json.gz'}
max_pseudo_atoms: 3
n_pseudo: 4
n_holdout: 2
steps: 2
upstream_steps_per_phonon_step: 1
phonon_batch_size: 1
upstream_batch_size: 2
ema_decay: 0.0
eval_protocols: [unrelaxed]
""")
    assert main(["finetune", str(cfg), "--cv", "2", "--cv-materials", "1", "--no-progress"]) == 0
    root = tmp_path / "run" / "cv"
    scored = []
    for i in (1, 2):
        split = json.loads((root / f"fold-{i}-of-2" / "split.json").read_text())
        assert len(split["cv"]) == len(split["train"]) == 1 and split["cv"] != split["train"]
        rows = json.loads((root / f"fold-{i}-of-2" / "rows.json").read_text())
        assert {(r["model"], r["protocol"]) for r in rows} == {("base", "unrelaxed"), ("fine-tuned", "unrelaxed")}
        assert {r["material"] for r in rows} == {Path(split["cv"][0]).name.removeprefix("POSCAR_")}
        scored += [r["material"] for r in rows]
    assert sorted(set(scored)) == ["Cr", "P-62m"]
    text = (root / "cv.txt").read_text()
    assert "2-fold cross-validation" in text and "vs base" in text
    assert text.count("unrelaxed ") >= 4  # pooled base + fine-tuned, one line per fold
    stamp = (root / "fold-1-of-2" / "rows.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["finetune", str(cfg), "--cv", "2", "--cv-materials", "1", "--no-progress"]) == 0
    assert "phonon training set" not in capsys.readouterr().out  # no fold trained again
    assert (root / "fold-1-of-2" / "rows.json").stat().st_mtime_ns == stamp
    first = (root / "fold-1-of-2" / "rows.json").read_text()
    (root / "fold-1-of-2" / "rows.json").unlink()
    assert main(["finetune", str(cfg), "--cv", "2", "--cv-materials", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "phonon training set" not in out and "fold 1/2: 1 materials held out, scoring 1 of 1" in out
    assert (root / "fold-1-of-2" / "rows.json").read_text() == first  # the stored model: same numbers
    changed = tmp_path / "changed.yaml"
    changed.write_text(cfg.read_text().replace("ema_decay: 0.0", "ema_decay: 0.5"))
    assert main(["finetune", str(changed), "--cv", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ema_decay: 0.0 → 0.5" in err and f"Delete {root}" in err
    loaded = load_config(cfg, pft.FinetuneConfig, {})
    assert crossval.stored_report(loaded) == text.rstrip()
    assert crossval.stored_report(dataclasses.replace(loaded, steps=3)) is None  # another recipe
