"""`curvax gk CONFIG.yaml`: Green–Kubo thermal conductivity from MD with the exact heat flux.

For each run: Maxwell–Boltzmann velocities (seed + run), Langevin equilibration at T, then NVE
production recording the heat flux (`curvax.md`, `curvax.heat_flux`); the fluxes of all runs go
into `curvax.green_kubo`. Each finished run is saved atomically to OUTPUT/run_XXX.npz, so a
killed job resumes with the next run. Writes OUTPUT/results.json (κ ± standard error over runs,
settings, NVE drift, timings) and OUTPUT/kappa.csv (t, isotropic HFACF, κ(t), error).

Config keys (YAML; see configs/gk-example.yaml):
  model:        "lennard-jones" | "morse" | a Nequix .nqx path or registered name     (required)
  model_params: keyword arguments of LennardJones / Morse (Å, eV)
  structure:    a file (ASE-readable; relative to the config file) or
                {bulk: Ar, crystalstructure: fcc, a: 5.26, cubic: true} (ase.build.bulk)  (required)
  supercell:    [n1, n2, n3] (default [1, 1, 1])
  temperature:  K (required)          dt: fs (default 2)
  equilibration_steps (default 1000)  steps: production steps per run (required)
  sample_every: steps per flux sample (default 1)        runs: independent runs (default 1)
  friction:     Langevin γ [1/fs] for equilibration (default 0.01)
  flux_route:   unfolded | edge (default unfolded)       correlation_time: fs (default: first dip)
  max_lag:      samples (default: steps / sample_every / 2)
  skin: Å (default 1.0)  chunk: frames per jitted chunk (default 200)  seed: int (default 0)
  x64: bool (default false)  output: directory (default "gk-<config name>", relative to cwd)
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

KEYS = {"model", "model_params", "structure", "supercell", "temperature", "dt",
        "equilibration_steps", "steps", "sample_every", "runs", "friction", "flux_route",
        "correlation_time", "max_lag", "skin", "chunk", "seed", "x64", "output"}
REQUIRED = ("model", "structure", "temperature", "steps")
DEFAULTS = dict(model_params={}, supercell=[1, 1, 1], dt=2.0, equilibration_steps=1000,
                sample_every=1, runs=1, friction=0.01, flux_route="unfolded",
                correlation_time=None, max_lag=None, skin=1.0, chunk=200, seed=0, x64=False,
                output=None)


def add_parser(subparsers):
    p = subparsers.add_parser("gk", help="Green-Kubo thermal conductivity from MD with exact heat flux",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config (see configs/gk-example.yaml)")
    p.add_argument("--output", default=None, help="override the config's output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def load_config(path) -> dict:
    """Read and validate a gk config; errors name the file and the problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(KEYS)}")
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise ValueError(f"{path}: missing required setting(s) {missing}")
    cfg = {**DEFAULTS, **cfg}
    for k in ("temperature", "dt", "steps", "runs", "sample_every", "chunk"):
        if not isinstance(cfg[k], (int, float)) or cfg[k] <= 0:
            raise ValueError(f"{path}: {k} must be a positive number, got {cfg[k]!r}")
    if cfg["steps"] < 4 * cfg["sample_every"]:
        raise ValueError(f"{path}: steps ({cfg['steps']}) must be ≥ 4 × sample_every")
    if cfg["flux_route"] not in ("unfolded", "edge"):
        raise ValueError(f"{path}: flux_route must be 'unfolded' or 'edge', got {cfg['flux_route']!r}")
    sc = cfg["supercell"]
    if not (isinstance(sc, list) and len(sc) == 3 and all(isinstance(n, int) and n > 0 for n in sc)):
        raise ValueError(f"{path}: supercell must be three positive integers, got {sc!r}")
    cfg["_path"] = str(path)
    return cfg


def build_potential(cfg):
    import jax.numpy as jnp

    from curvax.potentials import LennardJones, Morse, load_nequix

    name, params = cfg["model"], dict(cfg["model_params"] or {})
    where = cfg["_path"]
    try:
        if str(name).lower() in ("lennard-jones", "lj"):
            pot = LennardJones(**params)
        elif str(name).lower() == "morse":
            pot = Morse(**params)
        else:
            if params:
                raise ValueError("model_params only apply to lennard-jones / morse")
            pot = load_nequix(str(name))
    except TypeError as e:
        raise ValueError(f"{where}: bad model_params for {name}: {e}") from e
    if cfg["x64"]:
        pot = pot.astype(jnp.float64) if hasattr(pot, "astype") else pot
    return pot


def build_atoms(cfg):
    import ase.io
    from ase.build import bulk

    st, where = cfg["structure"], cfg["_path"]
    if isinstance(st, dict):
        st = dict(st)
        try:
            atoms = bulk(st.pop("bulk") if "bulk" in st else st.pop("name"), **st)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{where}: bad structure {cfg['structure']!r}: {e}") from e
    else:
        p = Path(st)
        if not p.is_absolute() and not p.is_file():
            p = Path(where).parent / p
        if not p.is_file():
            raise FileNotFoundError(f"{where}: structure file not found: {st}")
        try:
            atoms = ase.io.read(str(p))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p}: cannot read structure ({type(e).__name__}: {e})") from e
    if not all(atoms.pbc):
        raise ValueError(f"{where}: Green–Kubo needs a periodic (3D) structure")
    return atoms.repeat(tuple(cfg["supercell"]))


def _atomic_save(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _atomic_write(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(args) -> int:
    cfg = load_config(args.config)
    import jax

    if cfg["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from tqdm import tqdm

    from curvax import green_kubo as gk
    from curvax import md as M
    from curvax.system import from_atoms

    out = Path(args.output or cfg["output"] or f"gk-{Path(args.config).stem}")
    out.mkdir(parents=True, exist_ok=True)
    pot = build_potential(cfg)
    atoms = build_atoms(cfg)
    dtype = jnp.float64 if cfg["x64"] else jnp.float32
    system = from_atoms(atoms, dtype=dtype)
    masses = atoms.get_masses()
    T, dt, every = float(cfg["temperature"]), float(cfg["dt"]), int(cfg["sample_every"])
    n_samples = int(cfg["steps"]) // every
    n_eq = int(cfg["equilibration_steps"])
    settings = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "output"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    equil = M.dynamics(pot, masses, dt, flux_route=None, temperature=T, friction=float(cfg["friction"]),
                       sample_every=10, skin=float(cfg["skin"]))
    prod = M.dynamics(pot, masses, dt, flux_route=cfg["flux_route"], sample_every=every,
                      skin=float(cfg["skin"]))
    fluxes, drifts, temps = [], [], []
    total = int(cfg["runs"]) * (n_eq // 10 + n_samples)
    bar = tqdm(total=total, desc="gk frames", unit="frame", disable=args.no_progress)
    t0 = time.perf_counter()
    for r in range(int(cfg["runs"])):
        ck = out / f"run_{r:03d}.npz"
        if ck.is_file():
            d = np.load(ck)
            if str(d["digest"]) != digest:
                raise ValueError(f"{ck}: checkpoint from different settings; use a new output "
                                 f"directory or delete it")
            bar.update(n_eq // 10 + n_samples)
        else:
            v0 = M.maxwell_boltzmann(masses, T, seed=int(cfg["seed"]) + r)
            key = jax.random.PRNGKey(int(cfg["seed"]) + 1000 + r)
            state = None
            if n_eq >= 10:
                state, _ = M.simulate(equil, system, v0, n_eq // 10, chunk=int(cfg["chunk"]), key=key,
                                      progress=bar.update)
                state = state._replace(velocities=jnp.asarray(M.zero_momentum(state.velocities, masses)))
            _, fr = M.simulate(prod, system, v0, n_samples, chunk=int(cfg["chunk"]), state=state,
                               progress=bar.update)
            _atomic_save(ck, flux=fr.flux, flux_potential=fr.flux_potential,
                         potential_energy=fr.potential_energy, kinetic_energy=fr.kinetic_energy,
                         digest=np.array(digest))
            d = np.load(ck)
        fluxes.append(d["flux"])
        etot = d["potential_energy"] + d["kinetic_energy"]
        drifts.append(float(np.ptp(etot)))
        temps.append(float(np.mean(d["kinetic_energy"]) * 2 / (3 * len(atoms) * M.KB)))
    bar.close()
    res = gk.green_kubo(fluxes, dt * every, float(atoms.get_volume()), T, max_lag=cfg["max_lag"],
                        correlation_time=cfg["correlation_time"])
    summary = {
        "kappa_W_mK": res.value, "kappa_stderr_W_mK": res.error, "correlation_time_fs": res.correlation_time,
        "kappa_tensor_W_mK": res.kappa_tensor[res.cutoff_index].tolist(), "n_runs": res.n_runs,
        "n_atoms": len(atoms), "volume_A3": float(atoms.get_volume()), "temperature_K": T,
        "mean_nve_temperature_K": temps, "nve_total_energy_range_eV": drifts,
        "wall_time_s": time.perf_counter() - t0, "settings": settings,
        "units": {"flux": "eV*A/fs (extensive)", "time": "fs", "kappa": "W/m/K"},
    }
    _atomic_write(out / "results.json", json.dumps(summary, indent=2, default=str))
    table = np.column_stack([res.time, np.trace(res.hfacf, axis1=1, axis2=2) / 3, res.kappa,
                             res.kappa_stderr])
    tmp = out / "kappa.csv.tmp"
    np.savetxt(tmp, table, delimiter=",", header="time_fs,hfacf_iso_eV2A2_fs2,kappa_W_mK,kappa_stderr_W_mK",
               comments="")
    tmp.replace(out / "kappa.csv")
    err = "n/a (1 run)" if res.n_runs < 2 else f"{res.error:.3g}"
    print(f"kappa = {res.value:.4g} ± {err} W/m-K at t_c = {res.correlation_time:.1f} fs "
          f"({res.n_runs} runs, T = {T} K, {len(atoms)} atoms); results in {out}")
    return 0
