"""Every command honours `curvax --x64` (and computes in float32 without it): the potential it
loads and the numbers it writes are in the precision asked for (`curvax.precision`)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from curvax.cli import main
from curvax.finetune import pft
from curvax.potentials.base import Potential
from curvax.relax.data import RelaxPair, perturb, write_pairs

LJ = "lj:sigma=3.405,epsilon=0.0103,cutoff=6.0,r_inner=5.0"
FLAGS = {"float32": [], "float64": ["--x64"]}


@pytest.fixture
def loaded(monkeypatch):
    """dtypes of the potentials the command loaded (`load_potential` casts every one)."""
    seen = []
    cast = Potential.astype

    def spy(self, dtype):
        seen.append(jnp.dtype(dtype))
        return cast(self, dtype)

    monkeypatch.setattr(Potential, "astype", spy)
    return seen


@pytest.fixture(scope="module")
def argon(tmp_path_factory):
    d = tmp_path_factory.mktemp("ar")
    a = bulk("Ar", "fcc", a=5.3)
    write(d / "POSCAR", a, format="vasp")
    start = bulk("Ar", "fcc", a=5.3, cubic=True)
    start.rattle(0.05, seed=1)
    write(d / "start.extxyz", start)
    pairs = [RelaxPair(f"ar{k}", perturb(start, 0.05, 0.01, np.random.default_rng(k)), bulk("Ar", "fcc", a=5.3,
                                                                                       cubic=True), 0.0)
             for k in range(2)]
    write_pairs(d / "pairs.extxyz", pairs)
    return d


@pytest.mark.parametrize("precision", FLAGS)
def test_relax(precision, loaded, argon, tmp_path):
    out = tmp_path / "relaxed.extxyz"
    assert main(FLAGS[precision] + ["relax", str(argon / "start.extxyz"), "--model", LJ, "--steps", "30",
                                    "--out", str(out), "--no-progress"]) == 0
    assert loaded == [jnp.dtype(precision)]
    assert np.isfinite(read(out).get_potential_energy())


@pytest.mark.parametrize("precision", FLAGS)
def test_phonons(precision, loaded, argon, tmp_path):
    assert main(FLAGS[precision] + ["phonons", str(argon / "POSCAR"), "--model", LJ, "--supercell", "2", "2", "2",
                                    "--mesh", "4", "4", "4", "--no-plot", "--out", str(tmp_path)]) == 0
    assert loaded == [jnp.dtype(precision)]
    props = json.loads((tmp_path / "properties.json").read_text())["properties"]["model"]
    assert 0.5 < props["max_frequency"] < 3.0  # THz, fcc Ar


@pytest.mark.parametrize("precision", FLAGS)
def test_screen(precision, loaded, argon, tmp_path):
    assert main(FLAGS[precision] + ["screen", str(argon / "start.extxyz"), "--model", LJ, "--supercell-min-length",
                                    "8", "--mesh", "4", "4", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    assert loaded == [jnp.dtype(precision)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_ok"] == 1 and summary["settings"]["x64"] == (precision == "float64")


@pytest.mark.parametrize("precision", FLAGS)
def test_kappa(precision, loaded, argon, tmp_path):
    out = tmp_path / "kappa.json"
    assert main(FLAGS[precision] + ["kappa", str(argon / "POSCAR"), "--model", LJ, "--supercell", "2", "2", "2",
                                    "--mesh", "3", "3", "3", "--output", str(out)]) == 0
    assert loaded == [jnp.dtype(precision)]
    assert np.all(np.isfinite(json.loads(out.read_text())["kappa_W_mK_voigt"]))


@pytest.mark.parametrize("precision", FLAGS)
def test_gk(precision, loaded, tmp_path):
    cfg = tmp_path / "gk.yaml"
    cfg.write_text(f'model: "{LJ}"\nstructure: {{bulk: Ar, crystalstructure: fcc, a: 5.3, cubic: true}}\n'
                   "temperature: 40\nsteps: 8\nequilibration_steps: 0\nflux_route: edge\nchunk: 8\n")
    assert main(FLAGS[precision] + ["gk", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert loaded == [jnp.dtype(precision)]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["n_atoms"] == 4


@pytest.mark.parametrize("precision", FLAGS)
def test_relax_tune(precision, loaded, argon, tmp_path):
    cfg = tmp_path / "rt.yaml"
    cfg.write_text(f'model: "{LJ}"\ndata: {argon / "pairs.extxyz"}\nworkdir: {tmp_path / "w"}\n'
                   "split: [1.0, 0.0, 0.0]\nsteps: 1\nbatch_size: 2\nrelax_steps: 3\neval_relax_steps: 3\n")
    assert main(FLAGS[precision] + ["relax-tune", str(cfg), "--no-progress"]) == 0
    assert loaded == [jnp.dtype(precision)]
    assert (tmp_path / "w" / "evaluation.json").is_file()


@pytest.mark.parametrize("precision", FLAGS)
def test_finetune_passes_the_flag_to_its_config(precision, monkeypatch, tmp_path):
    """PFT needs a Nequix model and minutes; its run gets the config with x64 set by the flag
    (and `pft.run` casts with `precision.dtype_for(cfg.x64)`, as relax-tune does above)."""
    got = []
    monkeypatch.setattr(pft, "run", lambda cfg, **kw: got.append(cfg.x64) or (None, None, None))
    cfg = tmp_path / "pft.yaml"
    cfg.write_text(f"model: nequix-mp-1\nworkdir: {tmp_path / 'w'}\n")
    assert main(FLAGS[precision] + ["finetune", str(cfg)]) == 0
    assert got == [precision == "float64"]
