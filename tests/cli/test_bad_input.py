"""Bad input never crashes, hangs or gives a silent wrong number: each probe of the reliability
review (segfaults, hangs, silent results, tracebacks, late failures) is an exit code 2 and a
message naming the file / option / atom, before any model is loaded or compiled."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from curvax import LennardJones, compute, from_atoms
from curvax.cli import main
from curvax.system import System

LJ = "lj:sigma=3.405,epsilon=0.0103,cutoff=6.0,r_inner=5.0"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    si = bulk("Si", "diamond", a=5.43)
    si.positions[1, 2] = np.nan
    write(d / "nan.vasp", si, format="vasp")
    ar = Atoms("Ar2", positions=[[1, 1, 1], [1, 1, 1]], cell=[5, 5, 5], pbc=True)
    write(d / "coincident.vasp", ar, format="vasp")
    write(d / "ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    (d / "empty.yaml").write_text("")
    return d


def _run(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("command", ["phonons", "kappa", "relax"])
def test_nan_positions_are_an_error_not_a_segfault(command, files, capsys, tmp_path):
    extra = ["--out", str(tmp_path / "o")] if command in ("phonons", "relax") else []
    rc, err = _run(capsys, command, str(files / "nan.vasp"), "--model", LJ, *extra)
    assert rc == 2 and "nan.vasp" in err and "atom(s) [1] are NaN" in err


def test_coincident_atoms_are_an_error(files, capsys, tmp_path):
    rc, err = _run(capsys, "relax", str(files / "coincident.vasp"), "--model", LJ, "--out", str(tmp_path / "r.xyz"))
    assert rc == 2 and "atoms 0 and 1 are 0 Å apart" in err and "coincident.vasp" in err
    assert not (tmp_path / "r.xyz").exists()


@pytest.mark.parametrize("argv, message", [
    (["relax", "{ar}", "--chunk", "0"], "--chunk: '0' must be positive"),
    (["relax", "{ar}", "--skin", "-1"], "--skin: '-1' must be ≥ 0"),
    (["relax", "{ar}", "--steps", "six"], "--steps: 'six' is not an integer"),
    (["phonons", "{ar}", "--mesh", "-5"], "--mesh: '-5' must be positive"),
    (["phonons", "{ar}", "--temperature", "-300"], "--temperature: '-300' must be positive"),
    (["kappa", "{ar}", "--mesh", "0", "0", "0"], "--mesh: '0' must be positive"),
    (["kappa", "{ar}", "--temperatures", "-1"], "--temperatures: '-1' must be positive"),
])
def test_bad_options_stop_in_the_parser(argv, message, files, capsys):
    argv = [a.format(ar=files / "ar.vasp") for a in argv] + ["--model", LJ]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["phonons", "{ar}", "--supercell", "0", "0", "0"], "--supercell 0 0 0: the matrix must have a positive determinant"),
    (["phonons", "{ar}", "--mesh", "4", "4"], "--mesh takes a length"),
    (["phonons", "{ar}", "--supercell", "2", "2", "2", "--compare-dft", "{dft}"], "--supercell conflicts with --compare-dft"),
    (["phonons", "{ar}", "--compare-dft", "{empty}", "{dft}/FORCE_SETS"], "empty.yaml: not a readable phonon data set"),
    (["phonons", "{ar}", "--compare-dft", "{dft}/phonopy_disp.yaml", "{empty}"], "empty.yaml: cannot parse FORCE_SETS"),
    (["kappa", "{ar}", "--supercell", "0", "0", "0"], "--supercell 0 0 0"),
])
def test_bad_values_are_errors(argv, message, files, capsys, tmp_path):
    from conftest import PHONONS

    fmt = dict(ar=files / "ar.vasp", dft=PHONONS / "Cr", empty=files / "empty.yaml")
    argv = [a.format(**fmt) for a in argv] + ["--model", LJ] + (["--out", str(tmp_path)] if argv[0] == "phonons" else [])
    rc, err = _run(capsys, *argv)
    assert rc == 2 and message in err, err


@pytest.mark.parametrize("spec, message", [
    ("lj:sigma=-2,epsilon=0.01,cutoff=0", "sigma, cutoff must be positive"),
    ("lj:sigma=abc", "parameter sigma"),
])
def test_bad_model_specs(spec, message, files, capsys, tmp_path):
    rc, err = _run(capsys, "relax", str(files / "ar.vasp"), "--model", spec, "--out", str(tmp_path / "x.xyz"))
    assert rc == 2 and message in err


def test_relax_refuses_to_overwrite_and_checks_the_folder_first(files, capsys, tmp_path):
    out = tmp_path / "r.extxyz"
    out.write_text("keep me")
    rc, err = _run(capsys, "relax", str(files / "ar.vasp"), "--model", LJ, "--out", str(out))
    assert rc == 2 and "exists; pass --overwrite" in err and out.read_text() == "keep me"
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, err = _run(capsys, "relax", str(files / "ar.vasp"), "--model", LJ, "--out", str(blocker / "r.extxyz"))
    assert rc == 2 and "not writable" in err


@pytest.mark.parametrize("line, message", [
    ("friction: -1", "friction must be ≥ 0"),
    ("equilibration_steps: -5", "equilibration_steps must be ≥ 0"),
    ("steps: six", "steps must be int"),
    ("temperature: -40", "temperature must be a positive number"),
])
def test_gk_rejects_bad_settings_before_running(line, message, capsys, tmp_path):
    cfg = tmp_path / "gk.yaml"
    key = line.split(":")[0]
    base = {"model": f'"{LJ}"', "structure": "{bulk: Ar, crystalstructure: fcc, a: 5.3, cubic: true}",
            "temperature": "40", "steps": "8"}
    base[key] = line.split(": ", 1)[1]
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in base.items()) + "\n")
    rc, err = _run(capsys, "gk", str(cfg), "--output", str(tmp_path / "out"), "--no-progress")
    assert rc == 2 and message in err and "gk.yaml" in err
    assert not (tmp_path / "out").exists()


def test_gk_corrupt_run_file_is_named(capsys, tmp_path):
    cfg = tmp_path / "gk.yaml"
    cfg.write_text(f'model: "{LJ}"\nstructure: {{bulk: Ar, crystalstructure: fcc, a: 5.3, cubic: true}}\n'
                   "temperature: 40\nsteps: 8\nequilibration_steps: 0\nflux_route: edge\nchunk: 8\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_000.npz").write_bytes(b"PK\x03\x04truncated")
    rc, err = _run(capsys, "gk", str(cfg), "--output", str(out), "--no-progress")
    assert rc == 2 and "run_000.npz: unreadable run file" in err and "delete it" in err


@pytest.mark.parametrize("key, value, message", [
    ("upstream_batch_size", "2.5", "upstream_batch_size must be int"),
    ("ema_decay", "high", "ema_decay must be float"),
    ("eval_temperature", "-300", "eval_temperature [K] and max_force_drift [eV/Å] must be positive"),
    ("eval_mesh", "[0, 0, 0]", "eval_mesh must be three positive integers"),
    ("phonon_batch_size", "0", "phonon_batch_size must be ≥ 1"),
])
def test_finetune_config_errors_come_before_any_work(key, value, message, capsys, tmp_path):
    cfg = tmp_path / "pft.yaml"
    cfg.write_text(f"model: nequix-mp-1\nworkdir: {tmp_path / 'w'}\n{key}: {value}\n")
    rc, err = _run(capsys, "finetune", str(cfg))
    assert rc == 2 and message in err and "pft.yaml" in err
    assert not (tmp_path / "w").exists()


def test_api_shape_misuse_and_atomic_numbers():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    s = from_atoms(atoms)
    pot = LennardJones(3.4, 0.0104, cutoff=6.0)
    with pytest.raises(ValueError, match=r"\(3,\) atomic numbers for 4 positions"):
        compute(pot, s._replace(numbers=s.numbers[:3]))
    with pytest.raises(ValueError, match=r"atom\(s\) \[0\] have atomic numbers \[-1\], not 1–118"):
        compute(pot, s._replace(numbers=s.numbers.at[0].set(-1)))
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        compute(pot, System(jnp.zeros((4, 2)), s.cell, s.numbers))


def test_md_blow_up_says_diverged():
    from curvax.thermal import md as M

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    pot = LennardJones(3.405, 0.0103, cutoff=6.0)
    md = M.dynamics(pot, atoms.get_masses(), dt=2000.0, flux_route=None)
    v = M.maxwell_boltzmann(atoms.get_masses(), 5000.0, seed=0)
    with pytest.raises(M.DivergedError, match="reduce the time step"):
        M.simulate(md, from_atoms(atoms), v, 50, chunk=10)


def test_gk_checks_its_output_folder_first(capsys, tmp_path):
    cfg = tmp_path / "gk.yaml"
    cfg.write_text(f'model: "{LJ}"\nstructure: {{bulk: Ar, crystalstructure: fcc, a: 5.3, cubic: true}}\n'
                   "temperature: 40\nsteps: 8\n")
    (tmp_path / "file").write_text("")
    rc, err = _run(capsys, "gk", str(cfg), "--output", str(tmp_path / "file" / "out"), "--no-progress")
    assert rc == 2 and "output folder" in err and "not writable" in err


def test_relaxation_that_turns_nan_is_a_failure_not_converged():
    """A structure whose energy turns NaN stops, is not converged and says why; the others go on."""
    from curvax.relax import relax_systems

    class NaNForHelium(LennardJones):
        def __call__(self, r_ij, numbers, senders, receivers):
            e = super().__call__(r_ij, numbers, senders, receivers)
            return jnp.where(jnp.any(numbers == 2), jnp.nan, 1.0) * e

    pot = NaNForHelium(3.4, 0.0104, cutoff=6.0)
    good, bad = bulk("Ar", "fcc", a=5.4, cubic=True), bulk("He", "fcc", a=5.4, cubic=True)
    good.rattle(0.05, seed=0)
    _, info = relax_systems(pot, [from_atoms(good), from_atoms(bad)], steps=300, fmax=1e-2, chunk=50)
    assert info["converged"].tolist() == [True, False]
    assert info["error"][0] == "" and "NaN/inf" in info["error"][1]
