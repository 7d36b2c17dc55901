"""The one config loader (`curvax.config.load_config`) and the one atomic write (`curvax.io`)."""
import dataclasses
import os

import numpy as np
import pytest

from curvax.config import load_config, path_field, resolve_path
from curvax.io import atomic_write


@dataclasses.dataclass
class Example:
    model: str = path_field()
    files: list = path_field(default_factory=list)
    data: str | None = path_field(default=None)
    steps: int = 10
    rate: float = 0.5
    flag: bool = False
    workdir: str = "runs/x"

    def validate(self, where="config"):
        if self.steps < 1:
            raise ValueError(f"{where}: steps must be ≥ 1")


def test_relative_paths_follow_one_rule(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = sub / "c.yaml"
    cfg.write_text("model: ../models/m.nqx\nfiles: [a.extxyz, /abs/b.extxyz, nequix-mp-1]\n"
                   "data: data.json.gz\nworkdir: runs/here\n")
    c = load_config(cfg, Example)
    assert c.model == str((tmp_path / "models" / "m.nqx").resolve())
    assert c.files == [str((sub / "a.extxyz").resolve()), "/abs/b.extxyz", "nequix-mp-1"]
    assert c.data == str((sub / "data.json.gz").resolve())
    assert c.workdir == "runs/here"  # output folders stay relative to the current directory
    # model specs and registered names are not paths
    assert resolve_path(sub, "lj:sigma=3.4,cutoff=8.5") == "lj:sigma=3.4,cutoff=8.5"
    assert resolve_path(sub, "morse:r0=2.5") == "morse:r0=2.5"
    assert resolve_path(sub, "nequix-mp-1") == "nequix-mp-1"


@pytest.mark.parametrize("text, message", [
    ("model: m.nqx\nstepz: 3\n", "c.yaml: unknown config keys \\['stepz'\\]"),
    ("steps: 3\n", "c.yaml: missing required config keys \\['model'\\]"),
    ("model: m.nqx\nsteps: 2.5\n", "c.yaml: steps must be int, got 2.5"),
    ("model: m.nqx\nsteps: six\n", "c.yaml: steps must be int, got 'six'"),
    ("model: m.nqx\nsteps: true\n", "c.yaml: steps must be int, got True"),
    ("model: m.nqx\nrate: high\n", "c.yaml: rate must be float, got 'high'"),
    ("model: m.nqx\nflag: 'yes'\n", "c.yaml: flag must be true or false"),
    ("model: m.nqx\nfiles: a.extxyz\n", "c.yaml: files must be list"),
    ("model: m.nqx\nsteps: 0\n", "c.yaml: steps must be ≥ 1"),
    ("- a\n- b\n", "c.yaml: expected a mapping"),
    ("model: [unclosed\n", "c.yaml: not valid YAML"),
])
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(cfg, Example)


def test_overrides_and_missing_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m.nqx\nsteps: 3\n")
    c = load_config(cfg, Example, {"steps": 7, "workdir": None})
    assert c.steps == 7 and c.workdir == "runs/x" and c.rate == 0.5
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Example)


def test_atomic_write_text_bytes_and_writer(tmp_path):
    p = tmp_path / "out.json"
    atomic_write(p, "first")
    atomic_write(p, b"second")
    assert p.read_text() == "second"
    npz = tmp_path / "run.npz"
    atomic_write(npz, lambda tmp: np.savez(tmp, x=np.arange(3)))
    assert np.load(npz)["x"].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["out.json", "run.npz"]  # no temporary files left


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "result.txt"
    atomic_write(p, "good")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(p, broken)
    assert p.read_text() == "good" and os.listdir(tmp_path) == ["result.txt"]


def test_every_shipped_config_loads():
    """configs/*.yaml: known keys, valid values, the data and model paths they name exist."""
    from pathlib import Path

    from curvax.finetune.pft import FinetuneConfig
    from curvax.finetune.relax_tune import RelaxTuneConfig
    from curvax.thermal.workflow import GreenKuboConfig

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        kind = GreenKuboConfig if path.name.startswith("gk") else (
            RelaxTuneConfig if path.name.startswith("relax-tune") else FinetuneConfig)
        cfg = load_config(path, kind)
        if os.path.isdir(Path(__file__).parents[2] / "shared"):
            for name in ("model", "phonondb", "pseudo_label_structures", "data"):
                value = getattr(cfg, name, None)
                assert value is None or value.startswith(("nequix", "lj", "morse")) or os.path.exists(value), (path, value)
