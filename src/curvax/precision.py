"""The precision policy: float32 unless float64 is asked for, decided once, never at import.

curvax computes in the dtype of the potential's parameters (the Nequix weights are float32);
structures are converted to that dtype (`from_atoms(atoms, dtype=parameter_dtype(potential))`).
float64 is chosen in exactly one of three ways, each of which calls `enable_x64()`:

- the command line: `curvax --x64 COMMAND ...` (or `CURVAX_X64=1` in the environment),
  read once by `curvax.cli.main`;
- a config file's `x64: true` (finetune, relax-tune, gk), read by the command's `run`;
- Python: `curvax.enable_x64()` (or `jax.config.update("jax_enable_x64", True)`) before use.

`curvax.load_potential(spec)` then returns the potential in `default_dtype()`: float64 when x64
is enabled, float32 otherwise (an explicit `dtype=` overrides it). Importing curvax changes
no JAX setting.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp


def enable_x64(enabled: bool = True) -> None:
    """Turn JAX's 64-bit mode on (a no-op for `False`: float32 is the default, and turning
    x64 off under running code would change its dtypes)."""
    if enabled:
        jax.config.update("jax_enable_x64", True)


def x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def x64_from_environment() -> bool:
    """Whether `CURVAX_X64=1` is set (read by the command line only)."""
    return os.environ.get("CURVAX_X64", "0") == "1"


def default_dtype():
    """float64 if x64 is enabled, else float32: the dtype `load_potential` casts to."""
    return jnp.float64 if x64_enabled() else jnp.float32


def dtype_for(x64: bool):
    """The dtype of a command or config run: float64 (and x64 enabled) if `x64`, else float32,
    the shipped path. Each command calls this once with its `--x64` flag or `x64:` key."""
    enable_x64(x64)
    return jnp.float64 if x64 else jnp.float32
