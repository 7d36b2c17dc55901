"""Long commands resume only under the same settings; help and progress a user can rely on."""
import csv
import json

import numpy as np
import pytest
import yaml
from ase.build import bulk

from curvax.cli import COMMANDS, main
from curvax.finetune.training import prepare_workdir, save_checkpoint
from curvax.relax.data import RelaxPair, perturb, write_pairs

LJ = "lj:sigma=3.405,epsilon=0.0103,cutoff=6.0,r_inner=5.0"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    ref = bulk("Ar", "fcc", a=5.3, cubic=True)
    write_pairs(d / "pairs.extxyz", [RelaxPair(f"ar{k}", perturb(ref, 0.05, 0.01, np.random.default_rng(k)),
                                               ref, 0.0) for k in range(2)])
    return d / "pairs.extxyz"


def _config(path, pairs, workdir, **kw):
    cfg = {"model": f'"{LJ}"', "data": str(pairs), "workdir": str(workdir), "split": "[1.0, 0.0, 0.0]",
           "steps": 3, "batch_size": 2, "relax_steps": 3, "eval_relax_steps": 3, "checkpoint_every": 1}
    cfg.update(kw)
    path.write_text("\n".join(f"{k}: {v}" for k, v in cfg.items()) + "\n")
    return str(path)


def _rows(workdir):
    with open(workdir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_changed_config_is_refused_then_restarted(pairs, tmp_path, capsys):
    w = tmp_path / "w"
    cfg = _config(tmp_path / "a.yaml", pairs, w)
    assert main(["relax-tune", cfg, "--max-seconds", "0", "--no-progress"]) == 0
    assert len(_rows(w)) == 1
    changed = _config(tmp_path / "b.yaml", pairs, w, rattle=0.1, ema_decay=0.5)
    assert main(["relax-tune", changed, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "rattle: 0.05 → 0.1" in err and "ema_decay: 0.9 → 0.5" in err
    assert "--restart" in err and len(_rows(w)) == 1  # nothing was touched
    with pytest.raises(SystemExit) as stop:   # validated by the parser: steps ≥ 1
        main(["relax-tune", cfg, "--steps", "0", "--no-progress"])
    assert stop.value.code == 2 and "--steps: '0' must be positive" in capsys.readouterr().err
    assert main(["relax-tune", changed, "--restart", "--no-progress"]) == 0
    rows = _rows(w)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert yaml.safe_load((w / "config.yaml").read_text())["rattle"] == 0.1


def test_more_steps_resume_and_time_accumulates(pairs, tmp_path):
    w = tmp_path / "w"
    cfg = _config(tmp_path / "a.yaml", pairs, w, steps=2)
    assert main(["relax-tune", cfg, "--no-progress"]) == 0
    t2 = float(_rows(w)[-1]["time_s"])
    assert main(["relax-tune", cfg, "--steps", "3", "--no-progress"]) == 0  # more steps: allowed
    rows = _rows(w)
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and float(rows[-1]["time_s"]) > t2


def test_checkpoint_past_the_asked_steps_is_refused(tmp_path):
    import jax.numpy as jnp

    from curvax.finetune.training import TrainState

    record = {"lr": 1.0, "steps": 5}
    prepare_workdir(tmp_path, record, 5)
    state = TrainState(jnp.zeros((), jnp.int32), {}, {}, {})
    save_checkpoint(tmp_path / "checkpoint.eqx", state, {"step": 5})
    with pytest.raises(ValueError, match="checkpoint is at step 5, past steps = 3"):
        prepare_workdir(tmp_path, {"lr": 1.0, "steps": 3}, 3)
    with pytest.raises(ValueError, match=r"lr: 1.0 → 2.0"):
        prepare_workdir(tmp_path, {"lr": 2.0, "steps": 5}, 5)
    prepare_workdir(tmp_path, {"lr": 1.0, "steps": 8}, 8)  # the same run, longer
    prepare_workdir(tmp_path, {"lr": 2.0, "steps": 5}, 5, restart=True)
    assert not (tmp_path / "checkpoint.eqx").exists()


def test_a_setting_added_since_resumes_at_its_default(tmp_path):
    """A run recorded before a setting existed (its config.yaml lacks the key) resumes while the
    setting has its default (the main job's workdir from before `cv_fold`), and stops when not."""
    import dataclasses

    import jax.numpy as jnp

    from curvax.config import field_defaults
    from curvax.finetune.pft import FinetuneConfig
    from curvax.finetune.training import TrainState

    record = json.loads(json.dumps(dataclasses.asdict(FinetuneConfig(model="m.nqx")), default=str))
    defaults = field_defaults(FinetuneConfig)
    assert defaults["cv_fold"] == [] and "model" not in defaults  # required: no default
    older = {k: v for k, v in record.items() if k != "cv_fold"}
    prepare_workdir(tmp_path, older, record["steps"])
    save_checkpoint(tmp_path / "checkpoint.eqx", TrainState(jnp.zeros((), jnp.int32), {}, {}, {}), {"step": 1})
    prepare_workdir(tmp_path, older, record["steps"])  # rewrites config.yaml as the old record
    prepare_workdir(tmp_path, record, record["steps"], defaults=defaults)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))
    with pytest.raises(ValueError, match=r"cv_fold: \[\] → \[0, 3\]"):
        prepare_workdir(tmp_path, {**record, "cv_fold": [0, 3]}, record["steps"], defaults=defaults)
    with pytest.raises(ValueError, match=r"cv_fold: None → \[\]"):  # without defaults: a change
        prepare_workdir(tmp_path, record, record["steps"])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_help_is_whole_and_shows_defaults(command, capsys):
    name = {"relax_tune": "relax-tune"}.get(command.__name__.rsplit(".", 1)[-1], command.__name__.rsplit(".", 1)[-1])
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    last_line = command.__doc__.strip().splitlines()[-1].strip()
    assert " ".join(last_line.split()) in " ".join(out.split())  # the whole description, not its first line
    if "--no-progress" not in out:
        pytest.fail(f"{name} has no --no-progress")
    for line in out.split("  --")[1:]:  # every option has help text
        assert len(line.split(None, 1)) > 1, line


def test_importing_the_command_line_starts_no_backend():
    """Importing curvax and its commands starts no XLA backend (no threads, no compilation):
    a module-level JAX array once did, for every command including --help."""
    import subprocess
    import sys

    program = "import curvax.cli, jax._src.xla_bridge as xb; print(xb.backends_are_initialized())"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_phonons_and_kappa_show_progress(tmp_path, capsys):
    from ase.io import write

    write(tmp_path / "POSCAR", bulk("Ar", "fcc", a=5.3), format="vasp")
    assert main(["phonons", str(tmp_path / "POSCAR"), "--model", LJ, "--mesh", "4", "4", "4", "--no-plot",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "FC2 HVPs" in err and "1/1" in err
    assert main(["kappa", str(tmp_path / "POSCAR"), "--model", LJ, "--mesh", "3", "3", "3"]) == 0
    err = capsys.readouterr().err
    assert "FC3 supercells" in err


def test_second_run_uses_the_compilation_cache(tmp_path):
    """`curvax` keeps compiled programs in $CURVAX_JAX_CACHE: a second identical run finds them
    (entries reused, none added) and prints bit-identical numbers."""
    import os
    import subprocess
    import sys

    from ase.io import write

    write(tmp_path / "POSCAR", bulk("Ar", "fcc", a=5.3), format="vasp")
    env = {**os.environ, "CURVAX_JAX_CACHE": str(tmp_path / "cache")}

    def run(k):
        out = tmp_path / f"o{k}"
        subprocess.run([sys.executable, "-c", "import sys; from curvax.cli import main; sys.exit(main())", "phonons", str(tmp_path / "POSCAR"), "--model", LJ,
                        "--mesh", "4", "4", "4", "--no-plot", "--no-progress", "--out", str(out)],
                       check=True, env=env, capture_output=True)
        return json.loads((out / "properties.json").read_text())["properties"]["model"]

    first = run(1)
    entries = sorted(os.listdir(tmp_path / "cache"))
    assert entries  # programs were stored
    second = run(2)
    assert sorted(os.listdir(tmp_path / "cache")) == entries  # nothing new compiled
    assert second == first
