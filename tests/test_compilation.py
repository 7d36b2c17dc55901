"""`curvax.compilation.stored_jit`: a stored traced program gives the plain jit's numbers, a
later process (here: an emptied in-memory table) reads it instead of tracing, and a different
static part, or one that cannot be named, never reuses another call's program."""
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from curvax import compilation
from curvax.hessian import hessian_columns
from curvax.neighbors import allocate
from curvax.potentials import LennardJones, Morse
from curvax.system import from_atoms

traces = []


def columns(potential, system, graph, vs, chunk):
    traces.append(1)  # runs once per trace, not per call
    return hessian_columns(potential, system, graph, vs, chunk)


stored = compilation.stored_jit(columns)
plain = eqx.filter_jit(columns)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh program store, without turning on XLA's persistent cache for the rest of the suite."""
    monkeypatch.setattr(compilation, "_store", tmp_path / "programs")
    monkeypatch.setattr(compilation, "_loaded", {})
    traces.clear()
    return tmp_path / "programs"


def _case(potential):
    atoms = bulk("Ar", "fcc", a=5.2) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    system = from_atoms(atoms)
    _, graph = allocate(system, potential.cutoff)
    vs = np.random.default_rng(0).normal(size=(2, len(atoms), 3))
    return system, graph, jnp.asarray(vs)


LJ = LennardJones(sigma=3.4, epsilon=0.0104, cutoff=8.0)


def test_stored_program_equals_plain_jit_and_is_read_back_without_tracing(store):
    system, graph, vs = _case(LJ)
    reference = np.asarray(plain(LJ, system, graph, vs, 2))
    first = np.asarray(stored(LJ, system, graph, vs, 2))
    np.testing.assert_allclose(first, reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())
    files = sorted(store.iterdir())
    assert len(files) == 1 and files[0].suffix == ".jaxexport"
    n = len(traces)
    compilation._loaded.clear()  # as in a new process
    second = np.asarray(stored(LJ, system, graph, vs, 2))
    assert len(traces) == n  # read from the store, not traced
    assert np.array_equal(second, first)  # bit-identical across "runs"
    # other weights of the same architecture: the same program, their own numbers
    other = LennardJones(sigma=3.0, epsilon=0.02, cutoff=8.0)
    got = np.asarray(stored(other, system, graph, vs, 2))
    assert len(traces) == n and len(list(store.iterdir())) == 1
    np.testing.assert_allclose(got, np.asarray(plain(other, system, graph, vs, 2)), rtol=1e-12,
                               atol=1e-12 * np.abs(got).max())


def test_a_different_static_part_gets_its_own_program(store):
    system, graph, vs = _case(LJ)
    stored(LJ, system, graph, vs, 2)
    smooth = LennardJones(sigma=3.4, epsilon=0.0104, cutoff=8.0, smooth=True)  # static field differs
    got = np.asarray(stored(smooth, system, graph, vs, 2))
    np.testing.assert_allclose(got, np.asarray(plain(smooth, system, graph, vs, 2)), rtol=1e-12,
                               atol=1e-12 * np.abs(got).max())
    morse = Morse(epsilon=0.4, r0=2.55, rho0=6.0, rcut1=4.0, rcut2=5.0)  # another class
    s2, g2, v2 = _case(morse)
    got = np.asarray(stored(morse, s2, g2, v2, 2))
    np.testing.assert_allclose(got, np.asarray(plain(morse, s2, g2, v2, 2)), rtol=1e-12,
                               atol=1e-12 * np.abs(got).max())
    assert len(list(store.iterdir())) == 3


def test_unnameable_static_parts_are_not_stored_and_a_broken_file_is_replaced(store):
    system, graph, vs = _case(LJ)

    def f(potential, system, graph, vs, scale):
        return scale(hessian_columns(potential, system, graph, vs, 2))

    g = compilation.stored_jit(f)
    a = np.asarray(g(LJ, system, graph, vs, lambda x: 2 * x))
    b = np.asarray(g(LJ, system, graph, vs, lambda x: 3 * x))  # same repr, other behaviour
    np.testing.assert_allclose(3 * a, 2 * b, rtol=1e-12)
    assert not store.exists() or not list(store.iterdir())
    stored(LJ, system, graph, vs, 2)
    (path,) = store.iterdir()
    path.write_bytes(b"truncated")
    compilation._loaded.clear()
    got = np.asarray(stored(LJ, system, graph, vs, 2))
    np.testing.assert_allclose(got, np.asarray(plain(LJ, system, graph, vs, 2)), rtol=1e-12,
                               atol=1e-12 * np.abs(got).max())
    assert path.stat().st_size > 1000


def test_an_unwritable_store_still_computes(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the store folder should be: mkdir fails
    monkeypatch.setattr(compilation, "_store", blocker / "programs")
    monkeypatch.setattr(compilation, "_loaded", {})
    system, graph, vs = _case(LJ)
    got = np.asarray(stored(LJ, system, graph, vs, 2))
    np.testing.assert_allclose(got, np.asarray(plain(LJ, system, graph, vs, 2)), rtol=1e-12,
                               atol=1e-12 * np.abs(got).max())


def test_xla_cpu_flags_are_added_unless_already_set(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert compilation.set_xla_cpu_flags().split() == [
        "--xla_force_host_platform_device_count=2", "--xla_cpu_experimental_ynn_fusion_type="]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")  # the user's choice wins
    assert compilation.set_xla_cpu_flags() == "--xla_cpu_experimental_ynn_fusion_type=dot"
    monkeypatch.delenv("XLA_FLAGS")
    assert compilation.set_xla_cpu_flags() == "--xla_cpu_experimental_ynn_fusion_type="


_COMPILES_YNN = """
import sys, jax, jax.numpy as jnp
import curvax.cli as cli, curvax.cli.relax as command
def compiled_has_ynn(args=None):
    text = jax.jit(lambda a: jnp.tanh(a @ a) @ a).lower(jnp.ones((32, 32))).compile().as_text()
    print("__ynn_fusion" in text)
if sys.argv[1] == "cli":
    command.run = compiled_has_ynn
    cli.main(["relax", "x.vasp", "--model", "lj:sigma=3.4,epsilon=0.0104,cutoff=8"])
else:
    compiled_has_ynn()
"""


def test_command_line_compiles_without_ynn_fusions():
    """A command's programs are compiled with `XLA_CPU_FLAGS` (main sets them before the backend
    starts); a plain library process keeps XLA's default, which has YNNPACK fusions."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def has_ynn(route):
        out = subprocess.run([sys.executable, "-c", _COMPILES_YNN, route], capture_output=True, text=True,
                             env=env, check=True).stdout
        return out.split()[-1] == "True"

    assert has_ynn("library")  # else this jaxlib has no YNN fusions by default and the flag is moot
    assert not has_ynn("cli")
