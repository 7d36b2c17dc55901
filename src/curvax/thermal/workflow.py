"""Green–Kubo thermal conductivity from MD with the exact heat flux: the whole workflow.

    cfg = load_config("configs/gk-example.yaml", GreenKuboConfig)
    summary = run(cfg)                     # what `curvax gk CONFIG.yaml` does

For each run: Maxwell–Boltzmann velocities (seed + run), Langevin equilibration at T, then NVE
production recording the heat flux (`curvax.thermal.md`, `curvax.thermal.heat_flux`); the
fluxes of all runs go into `curvax.thermal.green_kubo`. Each finished run is saved atomically
to OUTPUT/run_XXX.npz with a digest of the settings, so a killed job resumes with the next run
and a changed config is refused. Writes OUTPUT/results.json (κ ± standard error over runs,
settings, NVE drift, timings) and OUTPUT/kappa.csv (t, isotropic HFACF, κ(t), error).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from curvax import precision
from curvax.config import at_least, path_field
from curvax.io import atomic_write
from curvax.potentials import load_potential
from curvax.system import from_atoms
from curvax.thermal import green_kubo as gk
from curvax.thermal import md as M
from curvax.validation import check_system, check_writable


@dataclasses.dataclass
class GreenKuboConfig:
    """Settings of `curvax gk` (YAML keys; see configs/gk-example.yaml)."""

    model: str = path_field()  # `load_potential` spec: .nqx path or name, lj:..., morse:...
    structure: str | dict = path_field()  # ASE-readable file, or {bulk: Ar, crystalstructure: fcc, a: 5.26, cubic: true}
    temperature: float  # K
    steps: int  # production steps per run
    supercell: list = dataclasses.field(default_factory=lambda: [1, 1, 1])
    dt: float = 2.0  # fs
    equilibration_steps: int = 1000
    sample_every: int = 1  # steps per flux sample
    runs: int = 1  # independent runs
    friction: float = 0.01  # Langevin γ [1/fs] for equilibration
    flux_route: str = "unfolded"  # unfolded | edge
    correlation_time: float | None = None  # fs (default: first dip of the HFACF)
    max_lag: int | None = None  # samples (default: steps / sample_every / 2)
    skin: float = 1.0  # Å
    chunk: int = 200  # frames per jitted chunk
    seed: int = 0
    x64: bool = False
    output: str | None = None  # directory, relative to the current directory (default gk-<config name>)

    def validate(self, where="config"):
        for k in ("temperature", "dt", "steps", "runs", "sample_every", "chunk", "skin"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"{where}: {k} must be a positive number, got {v!r}")
        at_least(where, self, 0, "friction", "equilibration_steps")
        for k in ("correlation_time", "max_lag"):
            if getattr(self, k) is not None and not getattr(self, k) > 0:
                raise ValueError(f"{where}: {k} must be positive (or null), got {getattr(self, k)!r}")
        if self.steps < 4 * self.sample_every:
            raise ValueError(f"{where}: steps ({self.steps}) must be ≥ 4 × sample_every")
        if self.flux_route not in ("unfolded", "edge"):
            raise ValueError(f"{where}: flux_route must be 'unfolded' or 'edge', got {self.flux_route!r}")
        sc = self.supercell
        if not (isinstance(sc, (list, tuple)) and len(sc) == 3
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sc)):
            raise ValueError(f"{where}: supercell must be three positive integers, got {sc!r}")

    def settings(self) -> dict:
        """The settings that define the result (what a run's digest is computed from)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "output"}


def build_atoms(cfg: GreenKuboConfig):
    """The MD cell: the structure (file or `ase.build.bulk` arguments) repeated `supercell` times."""
    import ase.io
    from ase.build import bulk

    st, where = cfg.structure, "gk structure"
    if isinstance(st, dict):
        st = dict(st)
        try:
            atoms = bulk(st.pop("bulk") if "bulk" in st else st.pop("name"), **st)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{where}: bad structure {cfg.structure!r}: {e}") from e
    else:
        p = Path(st)
        if not p.is_file():
            raise FileNotFoundError(f"structure file not found: {st}")
        try:
            atoms = ase.io.read(str(p))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p}: cannot read structure ({type(e).__name__}: {e})") from e
    if not all(atoms.pbc):
        raise ValueError(f"{where}: Green–Kubo needs a periodic (3D) structure")
    check_system(from_atoms(atoms), str(st) if not isinstance(st, dict) else where)
    return atoms.repeat(tuple(cfg.supercell))


def _read_run(path: Path) -> dict:
    """A finished run's arrays; a corrupt file is an error naming it (delete it to redo the run)."""
    try:
        with np.load(path) as d:
            return {k: d[k] for k in d.files}
    except Exception as e:  # noqa: BLE001  (BadZipFile, EOFError, ValueError, KeyError, ...)
        raise ValueError(f"{path}: unreadable run file ({type(e).__name__}: {e}); delete it to "
                         f"recompute that run") from None


def _save_npz(path: Path, **arrays):
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def run(cfg: GreenKuboConfig, output=None, progress: bool = True) -> dict:
    """Run (or resume) the Green–Kubo workflow of `cfg` in `output` (default: `cfg.output`, else
    ./gk-output); returns the summary written to OUTPUT/results.json (κ [W/m-K], its standard
    error, correlation time [fs], ...)."""
    from tqdm import tqdm

    dtype = precision.dtype_for(cfg.x64)
    out = check_writable(output or cfg.output or "gk-output", "output folder")
    atoms = build_atoms(cfg)  # validated before the model is loaded
    pot = load_potential(cfg.model, dtype)
    system = from_atoms(atoms, dtype=dtype)
    masses = atoms.get_masses()
    T, dt, every = float(cfg.temperature), float(cfg.dt), int(cfg.sample_every)
    n_samples = int(cfg.steps) // every
    n_eq = int(cfg.equilibration_steps)
    settings = cfg.settings()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    equil = M.dynamics(pot, masses, dt, flux_route=None, temperature=T, friction=float(cfg.friction),
                       sample_every=10, skin=float(cfg.skin))
    prod = M.dynamics(pot, masses, dt, flux_route=cfg.flux_route, sample_every=every, skin=float(cfg.skin))
    fluxes, drifts, temps = [], [], []
    total = int(cfg.runs) * (n_eq // 10 + n_samples)
    bar = tqdm(total=total, desc="gk frames", unit="frame", disable=not progress)
    t0 = time.perf_counter()
    for r in range(int(cfg.runs)):
        ck = out / f"run_{r:03d}.npz"
        if ck.is_file():
            d = _read_run(ck)
            if str(d["digest"]) != digest:
                raise ValueError(f"{ck}: checkpoint from different settings; use a new output "
                                 f"directory or delete it")
            bar.update(n_eq // 10 + n_samples)
        else:
            v0 = M.maxwell_boltzmann(masses, T, seed=int(cfg.seed) + r)
            key = jax.random.PRNGKey(int(cfg.seed) + 1000 + r)
            state = None
            if n_eq >= 10:
                state, _ = M.simulate(equil, system, v0, n_eq // 10, chunk=int(cfg.chunk), key=key,
                                      progress=bar.update)
                state = state._replace(velocities=jnp.asarray(M.zero_momentum(state.velocities, masses)))
            _, fr = M.simulate(prod, system, v0, n_samples, chunk=int(cfg.chunk), state=state,
                               progress=bar.update)
            _save_npz(ck, flux=fr.flux, flux_potential=fr.flux_potential,
                      potential_energy=fr.potential_energy, kinetic_energy=fr.kinetic_energy,
                      digest=np.array(digest))
            d = _read_run(ck)
        fluxes.append(d["flux"])
        etot = d["potential_energy"] + d["kinetic_energy"]
        drifts.append(float(np.ptp(etot)))
        temps.append(float(np.mean(d["kinetic_energy"]) * 2 / (3 * len(atoms) * M.KB)))
    bar.close()
    res = gk.green_kubo(fluxes, dt * every, float(atoms.get_volume()), T, max_lag=cfg.max_lag,
                        correlation_time=cfg.correlation_time)
    summary = {
        "kappa_W_mK": res.value, "kappa_stderr_W_mK": res.error, "correlation_time_fs": res.correlation_time,
        "kappa_tensor_W_mK": res.kappa_tensor[res.cutoff_index].tolist(), "n_runs": res.n_runs,
        "n_atoms": len(atoms), "volume_A3": float(atoms.get_volume()), "temperature_K": T,
        "mean_nve_temperature_K": temps, "nve_total_energy_range_eV": drifts,
        "wall_time_s": time.perf_counter() - t0, "settings": settings,
        "units": {"flux": "eV*A/fs (extensive)", "time": "fs", "kappa": "W/m/K"},
        "output": str(out),
    }
    atomic_write(out / "results.json", json.dumps(summary, indent=2, default=str))
    table = np.column_stack([res.time, np.trace(res.hfacf, axis1=1, axis2=2) / 3, res.kappa,
                             res.kappa_stderr])
    buf = io.StringIO()
    np.savetxt(buf, table, delimiter=",", header="time_fs,hfacf_iso_eV2A2_fs2,kappa_W_mK,kappa_stderr_W_mK",
               comments="")
    atomic_write(out / "kappa.csv", buf.getvalue())
    return summary
