"""MD (velocity Verlet / Langevin) recording the heat flux, Green–Kubo analysis, `curvax gk` CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from mpnn_toy import ToyMPNN

from curvax.thermal import green_kubo as gk
from curvax.thermal import heat_flux as hf
from curvax.thermal import md as M
from curvax.potentials import LennardJones
from curvax.system import from_atoms


@pytest.fixture(scope="module")
def argon():
    atoms = bulk("Ar", "fcc", 5.30, cubic=True).repeat(2)  # 32 atoms
    pot = LennardJones(3.405, 0.010323, cutoff=6.0, r_inner=5.0, smooth=True)
    return atoms, pot


def test_nve_conserves_energy_with_dt2_error(argon):
    """Velocity Verlet: the total energy fluctuates with amplitude ∝ dt² and does not drift.
    Same 600 fs trajectory with dt = 6 fs and 3 fs: fluctuation ratio ≈ 4."""
    atoms, pot = argon
    s = from_atoms(atoms)
    m = atoms.get_masses()
    v0 = M.maxwell_boltzmann(m, 40.0, seed=0)
    spread = {}
    for dt in (6.0, 3.0):
        md = M.dynamics(pot, m, dt, flux_route=None)
        _, fr = M.simulate(md, s, v0, int(600 / dt), chunk=200)
        e = fr.total_energy
        spread[dt] = np.ptp(e)
        ke = fr.kinetic_energy.mean()
        assert 20.0 < fr.temperature(len(atoms)).mean() < 60.0
        assert abs(e[-20:].mean() - e[:20].mean()) < 0.5 * spread[dt] + 1e-9  # no drift
    ratio = spread[6.0] / spread[3.0]
    assert 3.0 < ratio < 5.5, ratio
    assert spread[3.0] < 2e-3 * ke  # tiny compared with the kinetic energy


@pytest.mark.parametrize("friction,sample_every", [(0.0, 1), (0.02, 3)])
def test_neighbor_skin_gives_the_same_trajectory(argon, friction, sample_every):
    """MD reusing its (half) neighbour list within a skin follows the same trajectory as
    rebuilding a full list every step (float64), including across rebuilds (checked to happen),
    for NVE and Langevin (the same noise) and with several steps per recorded frame."""
    atoms, pot = argon
    system, m = from_atoms(atoms), atoms.get_masses()
    v = M.maxwell_boltzmann(m, 100.0, seed=2)
    runs = []
    for skin, half in ((0.0, False), (0.6, None)):
        md = M.dynamics(pot, m, 5.0, flux_route=None, neighbor_skin=skin, half_list=half, temperature=100.0,
                        friction=friction, sample_every=sample_every)
        state, frames = M.simulate(md, system, v, 80 // sample_every, chunk=40 // sample_every,
                                   key=jax.random.PRNGKey(1))
        runs.append((np.asarray(state.system.positions), frames))
    moved = np.max(np.linalg.norm(runs[0][0] - np.asarray(system.positions), axis=1))
    assert moved > 0.3, moved  # an atom moved skin/2: the reusing run rebuilt its list
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=0, atol=1e-9)
    for name in ("potential_energy", "kinetic_energy", "flux"):
        np.testing.assert_allclose(getattr(runs[1][1], name), getattr(runs[0][1], name), rtol=0, atol=1e-10)
    assert len(runs[1][1].potential_energy) == 80 // sample_every and not runs[1][1].overflow.any()


def test_langevin_reaches_target_temperature(argon):
    """OBABO Langevin from rest: the mean temperature after equilibration is the target."""
    atoms, pot = argon
    m = atoms.get_masses()
    md = M.dynamics(pot, m, 5.0, flux_route=None, temperature=50.0, friction=0.05, sample_every=5)
    _, fr = M.simulate(md, from_atoms(atoms), np.zeros((len(atoms), 3)), 160, chunk=160,
                       key=jax.random.PRNGKey(3))
    t = fr.temperature(len(atoms))[40:]
    assert abs(t.mean() - 50.0) < 5.0, t.mean()  # σ(T)/T ≈ 14% per frame, 120 frames
    with pytest.raises(ValueError, match="temperature"):
        M.dynamics(pot, m, 5.0, flux_route=None, temperature=0.0, friction=0.05)


def test_md_records_exact_flux_of_its_state():
    """The flux recorded by the MD loop (2-step toy MPNN, unfolded route) is the Hardy flux of the
    recorded state (positions, velocities after the step), convective term included."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    pot = ToyMPNN(cutoff=2.6)
    m = atoms.get_masses()
    s = from_atoms(atoms)
    md = M.dynamics(pot, m, 1.0, flux_route="unfolded", sample_every=2)
    state, fr = M.simulate(md, s, M.maxwell_boltzmann(m, 600.0, seed=1), 3, chunk=3)
    ref = hf.hardy_flux(pot, state.system, state.velocities, jnp.asarray(m))
    scale = np.abs(ref.flux).max()
    assert scale > 1e-8
    np.testing.assert_allclose(fr.flux[-1], ref.flux, atol=1e-10 * scale)
    np.testing.assert_allclose(fr.flux_potential[-1], ref.flux_potential, atol=1e-10 * scale)
    np.testing.assert_allclose(fr.potential_energy[-1], ref.energy, rtol=1e-12)


def test_hfacf_and_units_against_direct_sums():
    """HFACF = direct time-origin average; κ of a constant ACF c over t is c t / (V k_B T²)."""
    rng = np.random.default_rng(0)
    j = rng.normal(size=(37, 3))
    c = gk.hfacf(j, 10)
    direct = np.array([sum(np.outer(j[t], j[t + k]) for t in range(37 - k)) / (37 - k)
                       for k in range(10)])
    np.testing.assert_allclose(c, direct, rtol=1e-12, atol=1e-13)
    acf = np.ones((5, 3, 3)) * 2e-6  # (eV Å/fs)²
    k = gk.cumulative_kappa(acf, dt=2.0, volume=1000.0, temperature=300.0)
    from ase.units import kB as kb  # eV/K (ASE CODATA, as in the module)
    expected = 2e-6 * 8.0 / (1000.0 * kb * 300.0 ** 2) * 1.602176634e-19 / 1e-25
    np.testing.assert_allclose(k[-1, 0, 0], expected, rtol=1e-8)


def test_green_kubo_recovers_known_integral_with_stated_error():
    """Ornstein–Uhlenbeck flux with ⟨J_α(0)J_α(t)⟩ = s² exp(−t/τ): ∫ = s² τ exactly. κ(t) at
    t ≫ τ over 8 runs matches it within 4 stated standard errors, and the error is realistic."""
    from ase.units import kB as kb

    dt, tau, s2, n, runs = 1.0, 20.0, 1e-4, 20000, 8
    a = np.exp(-dt / tau)
    rng = np.random.default_rng(42)
    fluxes = []
    for _ in range(runs):
        x = np.zeros((n, 3))
        x[0] = rng.normal(size=3) * np.sqrt(s2)
        noise = rng.normal(size=(n, 3)) * np.sqrt(s2 * (1 - a * a))
        for t in range(1, n):
            x[t] = a * x[t - 1] + noise[t]
        fluxes.append(x)
    V, T = 500.0, 100.0
    res = gk.green_kubo(fluxes, dt, V, T, max_lag=300, correlation_time=150.0)
    exact = s2 * tau / (V * kb * T ** 2) * gk.EV_PER_A_FS_K_TO_W_PER_M_K
    # trapezoid of a discrete exponential: ∫ ≈ dt (1+a)/(2(1−a)) s² (exact for the sampled ACF)
    exact *= dt * (1 + a) / (2 * (1 - a)) / tau
    assert res.n_runs == runs and res.correlation_time == 150.0
    assert abs(res.value - exact) < 4 * res.error, (res.value, exact, res.error)
    assert 0.02 * exact < res.error < 0.3 * exact
    np.testing.assert_allclose(res.kappa_tensor[res.cutoff_index].diagonal().mean(), res.value)
    default = gk.green_kubo(fluxes, dt, V, T, max_lag=300)  # first dip of the averaged HFACF
    assert default.correlation_time > 2 * tau
    with pytest.raises(ValueError, match="NaN"):
        gk.green_kubo([np.full((10, 3), np.nan)], dt, V, T)


GK_CONFIG = """
model: "lj:sigma=3.405,epsilon=0.010323,cutoff=6.0,r_inner=5.0,smooth=true"
structure: {bulk: Ar, crystalstructure: fcc, a: 5.30, cubic: true}
supercell: [2, 2, 2]
temperature: 40
dt: 5.0
equilibration_steps: 40
steps: 60
sample_every: 2
runs: 2
flux_route: edge
x64: true
chunk: 30
"""


def test_gk_cli_runs_resumes_and_rejects_bad_config(tmp_path, capsys):
    from curvax.cli import main

    cfg = tmp_path / "gk.yaml"
    cfg.write_text(GK_CONFIG)
    out = tmp_path / "out"
    assert main(["gk", str(cfg), "--output", str(out), "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert np.isfinite(r["kappa_W_mK"]) and np.isfinite(r["kappa_stderr_W_mK"])
    assert r["n_runs"] == 2 and r["n_atoms"] == 32
    assert all(abs(t - 40) < 25 for t in r["mean_nve_temperature_K"])
    table = np.loadtxt(out / "kappa.csv", delimiter=",", skiprows=1)
    assert table.shape == (15, 4)
    # resume: finished runs are read back, not recomputed -> identical result
    mtime = (out / "run_000.npz").stat().st_mtime_ns
    assert main(["gk", str(cfg), "--output", str(out), "--no-progress"]) == 0
    assert (out / "run_000.npz").stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text())["kappa_W_mK"] == r["kappa_W_mK"]
    # changed settings do not silently mix with old checkpoints
    cfg.write_text(GK_CONFIG.replace("temperature: 40", "temperature: 50"))
    assert main(["gk", str(cfg), "--output", str(out), "--no-progress"]) == 2
    assert "different settings" in capsys.readouterr().err
    cfg.write_text(GK_CONFIG + "stepz: 3\n")
    assert main(["gk", str(cfg), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "gk.yaml" in err and "stepz" in err
