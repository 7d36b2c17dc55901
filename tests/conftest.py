"""Shared fixtures. Tests run in float64 where they compare with finite differences or ASE."""
import gc
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
os.environ["CURVAX_JAX_CACHE"] = "off"  # the CLI's persistent compilation cache: only where a test asks

SHARED = Path(os.environ.get("CURVAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
NEQUIX_MP = SHARED / "models" / "nequix-mp-1.nqx"
NEQUIX_MP_PFT = SHARED / "models" / "nequix-mp-1-pft.nqx"
PHONONS = SHARED / "data" / "phonons"
KAPPA = SHARED / "data" / "kappa"
RELAX = SHARED / "data" / "relax"


@pytest.fixture(scope="session")
def nequix32():
    """Nequix MP (float32, as shipped)."""
    import jax.numpy as jnp

    from curvax import load_potential

    if not NEQUIX_MP.is_file():
        pytest.skip(f"{NEQUIX_MP} missing")
    return load_potential(str(NEQUIX_MP), dtype=jnp.float32)


@pytest.fixture(scope="session")
def nequix64(nequix32):
    """Nequix MP cast to float64 (for finite-difference checks)."""
    import jax.numpy as jnp

    return nequix32.astype(jnp.float64)


@pytest.fixture(scope="session")
def small_nequix(tmp_path_factory):
    """A `.nqx` file of Nequix MP's architecture family at toy size (2 layers, 8x0e + 4x1o,
    lmax 1; Nequix MP's elements and cutoff; random weights): for tests of the fine-tuning
    machinery (folds, resume, stored models) that need a Nequix model but not its numbers —
    its third-order programs compile in seconds, the real model's in ≈ 1.5 min."""
    import json

    from curvax.potentials.nequix import NequixPotential, initialised

    if not NEQUIX_MP.is_file():
        pytest.skip(f"{NEQUIX_MP} missing")
    with open(NEQUIX_MP, "rb") as f:
        config = json.loads(f.readline().decode())
    config.update(hidden_irreps="8x0e + 4x1o", lmax=1, n_layers=2, radial_basis_size=4, radial_mlp_size=8,
                  radial_mlp_layers=1)
    with jax.enable_x64(False):
        model = initialised(config, jax.random.key(7))
        return NequixPotential(model, config).save(tmp_path_factory.mktemp("small_nequix") / "small.nqx")


# Every compiled XLA program keeps its JIT-linked code mapped (a few memory maps per kernel; the
# Nequix fine-tuning CLI test alone reached 24 000). Over the whole suite they exceeded the
# kernel's vm.max_map_count (65530) and XLA crashed (SIGSEGV/SIGABRT) while compiling the Nequix
# relaxation near the end, so each test module releases its compiled programs when it ends.
@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    jax.clear_caches()
    gc.collect()
