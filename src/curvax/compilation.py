"""Compile once, across processes: JAX's persistent compilation cache and stored traced programs.

The command line turns both layers on (`enable_caches`, folder `$CURVAX_JAX_CACHE`, default
~/.cache/curvax/jax; `off` disables both, as the test suite does):

1. XLA's persistent compilation cache (`jax_compilation_cache_dir`): a compiled program is found
   by the hash of its StableHLO, so running a command again on the same shapes compiles nothing.
   To get that StableHLO, though, JAX must trace the Python function again — for a Nequix
   Hessian-vector product that is most of a second run (≈ 5–9 s on a 2-core CPU).
2. `stored_jit(fn)`: the traced program itself is kept on disk (`jax.export`, serialised
   StableHLO, in `programs/`) and a later process deserialises it instead of tracing. Its key is
   the function's name, the static (non-array) part of its arguments (for a model: the
   architecture and its settings), the shape and dtype of every array argument (the weights are
   arguments, so every model of one architecture shares a program), the JAX / jaxlib / equinox /
   nequix / e3nn-jax versions, a hash of curvax's own source, the backend and the x64 flag. An
   argument whose static part cannot be named reliably (a lambda, a closure, an object printed by
   address) is not stored: that call is jitted as usual. Every call of a stored function, the
   first included, runs the exported program, so the first and later runs are bit-identical.
   Single-device only (with several devices `stored_jit` is plain `eqx.filter_jit`).
3. `set_xla_cpu_flags`: XLA:CPU options the command line runs with (`XLA_CPU_FLAGS`), added to
   $XLA_FLAGS before JAX starts its backend.
Ref.: https://docs.jax.dev/en/latest/export/export.html, .../persistent_compilation_cache.html
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from importlib import metadata
from pathlib import Path

import equinox as eqx
import jax

__all__ = ["CACHE_ENV", "XLA_CPU_FLAGS", "enable_caches", "set_xla_cpu_flags", "stored_jit"]

CACHE_ENV = "CURVAX_JAX_CACHE"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNNAMEABLE = ("<lambda>", "<locals>", " object>")   # what an address-free repr cannot tell apart
_store: Path | None = None
_loaded: dict[str, object] = {}   # key -> jitted call of the deserialised program (this process)


# XLA:CPU without its YNNPACK library fusions (dots and elementwise ops handed to YNNPACK; on by
# default in jaxlib 0.10): measured on the 2-core CPU with Nequix MP, float32 — PFT training step
# 2.5 → 2.1 s (unit cells, 512 edges) and 12 → 10.5 s (1 976 edges), FC2 HVPs of a 64-atom
# supercell 20.4 → 17.4 s and 38.5 → 31.8 s, reading the compiled HVP program from the cache
# 0.9 → 0.6 s (`YnnFusionThunkFromProto`); compilation ≈ 10 % slower. Results differ from XLA's
# default by float rounding only (FC2 to 1e-7 relative).
XLA_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def set_xla_cpu_flags() -> str:
    """Add `XLA_CPU_FLAGS` to the environment's XLA_FLAGS, each unless the user already set it
    there. Takes effect only before JAX starts its backend (the command line calls it first);
    importing curvax changes no JAX setting. Returns the new XLA_FLAGS."""
    current = os.environ.get("XLA_FLAGS", "")
    given = {f.lstrip("-").split("=", 1)[0] for f in current.split()}
    added = [f"--{k}={v}" for k, v in XLA_CPU_FLAGS.items() if k not in given]
    os.environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    return os.environ["XLA_FLAGS"]


def enable_caches(path: str | None = None) -> Path | None:
    """Both caches under `path` (default `$CURVAX_JAX_CACHE`, else ~/.cache/curvax/jax): XLA's
    compiled programs in it, `stored_jit`'s traced programs in `path/programs`. "off", "0",
    "none" or "" disable both. Returns the folder, or None."""
    global _store
    path = os.environ.get(CACHE_ENV, str(Path("~/.cache/curvax/jax").expanduser())) if path is None else path
    if str(path).lower() in ("", "0", "off", "none"):
        _store = None
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # every program, however quick to compile: a second run then compiles nothing (a 0.1 s
    # threshold stored a program in one run and not in the next when its compile time was near it)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _store = Path(path) / "programs"
    return Path(path)


@functools.cache
def _environment() -> str:
    """What a traced program depends on besides the arguments: library versions, curvax's source."""
    versions = []
    for dist in ("jax", "jaxlib", "equinox", "nequix", "e3nn-jax"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=-")
    source = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        source.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return ";".join(versions) + f";curvax-src={source.hexdigest()}"


def _key(name: str, static, treedef, leaves) -> str | None:
    """Hex key of a call, or None when its static part has no reliable name."""
    described = _ADDRESS.sub("", f"{treedef}|{jax.tree_util.tree_leaves(static)!r}")
    if any(u in described for u in _UNNAMEABLE):
        return None
    avals = [(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves]
    text = "|".join([name, described, repr(avals), _environment(), jax.default_backend(),
                     str(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision)])
    return hashlib.sha256(text.encode()).hexdigest()


def _program(fn, key: str, static, treedef, leaves):
    """The exported program of `fn` for this key: read from the store, else traced and written."""
    from curvax.io import atomic_write

    path = _store / f"{key}.jaxexport"
    if path.exists():
        try:
            return jax.export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # noqa: BLE001  (a truncated or foreign file: trace again, overwrite)
            pass

    def flat(*xs):
        return fn(*eqx.combine(jax.tree_util.tree_unflatten(treedef, xs), static))

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=bool(getattr(x, "weak_type", False)))
              for x in leaves]
    exported = jax.export.export(jax.jit(flat))(*shapes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, bytes(exported.serialize()))
    except OSError:  # a read-only or full cache folder: this run still uses the program
        pass
    return exported


def stored_jit(fn):
    """`eqx.filter_jit(fn)` whose traced program is stored on disk and reused by later processes
    (module docstring). Array arguments (JAX or NumPy) are traced; everything else is static."""
    plain = eqx.filter_jit(fn)
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def call(*args):
        if _store is None or jax.device_count() > 1:
            return plain(*args)
        dynamic, static = eqx.partition(args, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten(dynamic)
        key = _key(name, static, treedef, leaves)
        if key is None:
            return plain(*args)
        run = _loaded.get(key)
        if run is None:
            run = _loaded[key] = jax.jit(_program(fn, key, static, treedef, leaves).call)
        return run(*leaves)

    call.jit = plain  # the route taken when storing is off (its compiled programs: `call.jit._cached`)
    return call
