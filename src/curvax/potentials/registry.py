"""The one model loader: `load_potential(spec)` for every command, config and script.

A spec is one of
- a Nequix `.nqx` file path, or a registered name (`nequix-mp-1`, `nequix-mp-1-pft`) looked up
  in `$CURVAX_MODEL_DIR` (os.pathsep-separated folders) and then `~/.cache/curvax/models`;
  nothing is downloaded unless `download=True` (tests and benchmarks never do);
- `lj:sigma=3.405,epsilon=0.0103,cutoff=8.5[,r_inner=7.5][,smooth=false]`: Lennard-Jones
  (Å, eV), smooth cutoff by default;
- `morse:epsilon=..,r0=..,rho0=..[,rcut1=..][,rcut2=..]`: Morse (ASE's form; eV, Å).

The potential comes back in `dtype`, by default the precision policy's
(`curvax.precision.default_dtype()`: float64 when x64 is enabled, else float32); the `.nqx`
weights are stored in float32. `save_potential` writes what `load_potential` reads back
(`.nqx` for Nequix) or a JSON record of the parameters (analytic potentials).
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import equinox as eqx
import numpy as np

from curvax import precision
from curvax.io import atomic_write
from curvax.potentials.lennard_jones import LennardJones
from curvax.potentials.morse import Morse
from curvax.potentials.nequix import read_nequix

# Published weights (downloaded only on explicit request by name; tests never use this).
NEQUIX_URLS = {
    "nequix-mp-1": "https://github.com/atomicarchitects/nequix/raw/7c2854de8e754b1a60274c7d9d2e014989ed632e/models/nequix-mp-1.nqx",
    "nequix-mp-1-pft": "https://github.com/atomicarchitects/nequix/raw/7c2854de8e754b1a60274c7d9d2e014989ed632e/models/nequix-mp-1-pft.nqx",
}

# analytic specs: name -> (class, {parameter: type}, fixed keyword arguments)
_ANALYTIC = {
    "lj": (LennardJones, {"sigma": float, "epsilon": float, "cutoff": float, "r_inner": float, "smooth": bool},
           {"smooth": True}),
    "morse": (Morse, {"epsilon": float, "r0": float, "rho0": float, "rcut1": float, "rcut2": float}, {}),
}
_NAMES = {"lj": "Lennard-Jones", "morse": "Morse"}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _analytic(spec: str):
    kind, _, args = spec.partition(":")
    cls, params, kwargs = _ANALYTIC[kind]
    kwargs = dict(kwargs)
    for item in filter(None, args.split(",")):
        if "=" not in item:
            raise ValueError(f"model {spec!r}: expected {kind}:key=value,... ({', '.join(params)})")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in params:
            raise ValueError(f"model {spec!r}: unknown {_NAMES[kind]} parameter {key!r}; known: {', '.join(params)}")
        try:
            kwargs[key] = _parse_bool(value) if params[key] is bool else float(value)
        except ValueError as e:
            raise ValueError(f"model {spec!r}: parameter {key}: {e}") from None
    bad = [k for k, v in kwargs.items() if params[k] is float and not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"model {spec!r}: {', '.join(bad)} must be positive (Å, eV)")
    pot = cls(**kwargs)
    if not 0 < pot.r_inner < pot.cutoff:
        raise ValueError(f"model {spec!r}: the smoothing must start inside the cutoff "
                         f"(0 < r_inner = {pot.r_inner:g} Å < cutoff = {pot.cutoff:g} Å)")
    return pot


def resolve_model_path(name_or_path: str, download: bool = False) -> Path:
    """A local `.nqx` path for a file path or a registered name.

    Search order for a name: the path itself; `$CURVAX_MODEL_DIR/<name>.nqx`;
    `~/.cache/curvax/models/<name>.nqx`; then (only if `download=True`) the published URL.
    """
    p = Path(name_or_path).expanduser()
    if p.suffix == ".nqx" or os.sep in str(name_or_path):
        if not p.is_file():
            raise FileNotFoundError(f"model file not found: {p}")
        return p
    dirs = [Path(d) for d in os.environ.get("CURVAX_MODEL_DIR", "").split(os.pathsep) if d]
    dirs.append(Path("~/.cache/curvax/models").expanduser())
    for d in dirs:
        if (d / f"{name_or_path}.nqx").is_file():
            return d / f"{name_or_path}.nqx"
    if name_or_path not in NEQUIX_URLS:
        raise FileNotFoundError(f"unknown model '{name_or_path}': not a file, not lj:/morse:, and not one "
                                f"of {sorted(NEQUIX_URLS)}")
    if not download:
        raise FileNotFoundError(
            f"model '{name_or_path}' is not in {[str(d) for d in dirs]}; pass a path to the .nqx file, "
            f"set CURVAX_MODEL_DIR, or allow download")
    target = dirs[-1] / f"{name_or_path}.nqx"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: urllib.request.urlretrieve(NEQUIX_URLS[name_or_path], tmp))
    return target


def load_potential(spec, dtype=None, download: bool = False):
    """The potential named by `spec` (module doc), with floating parameters in `dtype`
    (default: `curvax.precision.default_dtype()`)."""
    spec = str(spec)
    kind = spec.partition(":")[0]
    if kind in _ANALYTIC and (":" in spec or spec == kind):
        pot = _analytic(spec)
    else:
        pot = read_nequix(resolve_model_path(spec, download=download))
    return pot.astype(precision.default_dtype() if dtype is None else dtype)


def save_potential(potential, path_stem) -> Path:
    """Nequix: `<stem>.nqx` (loads with `load_potential` and `nequix.model.load_model`); other
    potentials: `<stem>.json` of their floating parameters."""
    path_stem = Path(path_stem)
    if hasattr(potential, "save"):
        return potential.save(path_stem.with_suffix(".nqx"))
    params = {k: np.asarray(v).tolist() for k, v in vars(potential).items() if eqx.is_inexact_array(v)}
    record = {"type": type(potential).__name__, "cutoff": potential.cutoff, **params}
    return atomic_write(path_stem.with_suffix(".json"), json.dumps(record, indent=2))
