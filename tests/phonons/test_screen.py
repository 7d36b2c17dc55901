"""Phonon screening: the batched, bucketed HVP route gives the same properties as the one-material
FC2 route; a killed run resumes without recomputing; bad structures become error rows; a second
batch of the same shapes compiles nothing; the CLI writes its table, summary and plots; Nequix
float32 heat capacities agree with the Alexandria PBE references."""
import csv
import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from conftest import NEQUIX_MP, RELAX, SHARED

from curvax.cli import main
from curvax.phonons import screen as scr
from curvax.phonons.fc2 import force_constants_from_atoms
from curvax.phonons.properties import phonon_properties
from curvax.potentials import Morse

MORSE_SPEC = "morse:epsilon=0.4,r0=2.55,rho0=6.0"


@pytest.fixture(scope="module")
def morse():
    return Morse(epsilon=0.4, r0=2.55, rho0=6.0)


def crystals():
    """Three small crystals of different symmetry and size (two buckets at 7 Å)."""
    hcp = bulk("Cu", "hcp", a=2.6, c=4.1)
    bcc = bulk("Cu", "bcc", a=2.95)
    fcc = bulk("Cu", "fcc", a=3.7, cubic=True)
    fcc.positions[0] += [0.05, 0.0, 0.02]  # lower symmetry: more displacements
    out = []
    for k, a in enumerate((hcp, bcc, fcc)):
        a.info["material_id"] = f"c{k}"
        a.info["heat_capacity"] = 3 * 8.314 * len(a)  # a Dulong–Petit "reference" for the error columns
        out.append(a)
    return out


def test_supercell_for_length():
    cell = bulk("Cu", "fcc", a=3.6).cell  # primitive fcc: plane spacing a/√3
    m = scr.supercell_for_length(cell, 10.0)
    n = np.diag(m)
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    assert np.all(n * heights >= 10.0) and np.all((n - 1) * heights < 10.0)
    assert n.tolist() == [5, 5, 5]


def test_screen_equals_one_material_route(tmp_path, morse):
    atoms = crystals()
    ase.io.write(tmp_path / "in.extxyz", atoms)
    entries = scr.read_structures(tmp_path / "in.extxyz")
    summary = scr.screen(entries, morse, tmp_path / "out", min_length=7.0, temperatures=[100.0, 300.0],
                         mesh=[6, 6, 6], width=3, progress=False)
    assert summary["n_ok"] == 3 and len(summary["this_run"]["buckets"]) >= 2
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    for a in atoms:
        smat = scr.supercell_for_length(a.cell, 7.0)
        ph, _ = force_constants_from_atoms(a, smat, morse, primitive_matrix=None)
        ref = phonon_properties(ph, [100.0, 300.0], [6, 6, 6])
        row = rows[a.info["material_id"]]
        assert float(row["nu_max_THz"]) == pytest.approx(ref["max_frequency"], rel=1e-5)
        assert float(row["Cv_100K_J/K/mol"]) == pytest.approx(ref["heat_capacity"][0], rel=1e-5)
        assert float(row["S_300K_J/K/mol"]) == pytest.approx(ref["entropy"][1], rel=1e-5)
        assert float(row["error_Cv_300K_J/K/mol"]) == pytest.approx(
            ref["heat_capacity"][1] - a.info["heat_capacity"], rel=1e-5)
    assert summary["mae_vs_dft"]["heat_capacity"]["n"] == 3
    assert (tmp_path / "out" / "parity.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "errors.png").stat().st_size > 10_000


def test_resume_after_a_kill_recomputes_nothing_done(tmp_path, morse, monkeypatch):
    ase.io.write(tmp_path / "in.extxyz", crystals())
    entries = scr.read_structures(tmp_path / "in.extxyz")
    kw = dict(min_length=6.0, mesh=[4, 4, 4], width=2, progress=False)
    scr.screen(entries, morse, tmp_path / "out", **kw)
    first = (tmp_path / "out" / "results.csv").read_text()
    log = tmp_path / "out" / "results.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the second row
    computed = []
    original = scr._properties_row
    monkeypatch.setattr(scr, "_properties_row", lambda job, *a: computed.append(job.entry.id) or original(job, *a))
    scr.screen(entries, morse, tmp_path / "out", **kw)
    assert sorted(computed) == sorted(e.id for e in entries if e.id != json.loads(lines[0])["id"])
    assert (tmp_path / "out" / "results.csv").read_text() == first
    computed.clear()
    scr.screen(entries, morse, tmp_path / "out", **kw)  # all done: nothing recomputed
    assert computed == []
    with pytest.raises(ValueError, match="different settings: min_length: 6.0 → 8.0"):
        scr.screen(entries, morse, tmp_path / "out", **{**kw, "min_length": 8.0})
    # a screen extended to more structures (a larger --limit) resumes
    scr.screen(entries[:2], morse, tmp_path / "more", settings={"limit": 2}, **kw)
    summary = scr.screen(entries, morse, tmp_path / "more", settings={"limit": 3}, **kw)
    assert summary["this_run"]["structures"] == 1 and summary["n_ok"] == 3


def test_bad_structures_are_error_rows(tmp_path, morse):
    good = crystals()[1]
    close = bulk("Cu", "fcc", a=3.6, cubic=True)
    close.positions[1] = close.positions[0] + [0.2, 0.0, 0.0]
    huge = bulk("Cu", "fcc", a=3.6, cubic=True)  # 2×2×2 at 6 Å: 32 atoms; `good` needs 27
    nan = bulk("Cu", "bcc", a=2.95)
    nan.positions[0, 0] = np.nan
    path = tmp_path / "in.extxyz"
    for k, a in enumerate((good, close, huge)):
        a.info["material_id"] = ["ok", "close", "huge"][k]
    ase.io.write(path, [good, close, huge])
    entries = scr.read_structures(path) + [scr._entry("nan", nan, {}, "test")]
    summary = scr.screen(entries, morse, tmp_path / "out", min_length=6.0, mesh=[4, 4, 4],
                         max_supercell_atoms=30, progress=False)
    assert summary["n_ok"] == 1
    assert "0.2 Å apart" in summary["failed"]["close"] and "frame 1" in summary["failed"]["close"]
    assert "supercell of 32 atoms > max_supercell_atoms = 30" in summary["failed"]["huge"]
    assert "non-finite" in summary["failed"]["nan"] or "NaN" in summary["failed"]["nan"]


def test_same_buckets_compile_nothing_new(tmp_path, morse):
    """Compilations grow with shape buckets, not structures: a second set of different crystals
    that fall in the same buckets runs without a single XLA compilation."""
    def cells(a):
        out = [bulk("Cu", "fcc", a=a, cubic=True), bulk("Cu", "fcc", a=a + 0.02, cubic=True)]
        out[1].positions[0] += [0.03, 0.01, 0.0]
        return out

    kw = dict(min_length=6.0, mesh=[4, 4, 4], width=4, progress=False)
    for k, a in enumerate((3.70, 3.72)):
        path = tmp_path / f"in{k}.extxyz"
        ase.io.write(path, cells(a))
        summary = scr.screen(scr.read_structures(path), morse, tmp_path / f"out{k}", **kw)
        assert summary["n_ok"] == 2
        assert len(summary["this_run"]["buckets"]) == 1
    assert summary["this_run"]["xla_compilations"] == 0


def test_cli_phonondb_folder(tmp_path):
    """A phonondb folder is its own DFT reference (all four properties), on the DFT supercell."""
    phonondb = SHARED / "data" / "phonondb"
    if not phonondb.is_dir():
        pytest.skip("no phonondb")
    out = tmp_path / "out"
    rc = main(["screen", str(phonondb), "--model", MORSE_SPEC, "--limit", "1", "--max-supercell-atoms", "24",
               "--mesh", "4", "4", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    row = next(csv.DictReader(open(out / "results.csv")))
    for col in ("dft_nu_max_THz", "dft_S_300K_J/K/mol", "dft_F_300K_kJ/mol", "dft_Cv_300K_J/K/mol"):
        assert col in row and row[col] != ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mae_vs_dft"]["max_frequency_K"]["unit"] == "K"


@pytest.mark.skipif(not NEQUIX_MP.is_file(), reason="Nequix MP weights missing")
def test_cli_nequix_float32_heat_capacity_vs_alexandria(tmp_path):
    """Shipped float32 Nequix MP on the first Alexandria PBE crystal (BaO2): Cv at 300 K within
    2 J/K/mol of DFT (per mole of the given cell; a unit or per-cell mistake would be ≥ 20)."""
    out = tmp_path / "out"
    rc = main(["screen", str(RELAX / "alexandria-binary-pbe-phonon-2025.1.json.gz"), "--model", str(NEQUIX_MP),
               "--limit", "1", "--supercell-min-length", "6", "--out", str(out), "--no-progress"])
    assert rc == 0
    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["id"] == "mp-1105" and row["error"] == ""
    assert abs(float(row["error_Cv_300K_J/K/mol"])) < 2.0
    assert (out / "parity.png").is_file()
