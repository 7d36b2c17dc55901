"""Shared fixtures. Tests run in float64 where they compare with finite differences or ASE."""
import os
import threading
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

SHARED = Path(os.environ.get("CURVAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
NEQUIX_MP = SHARED / "models" / "nequix-mp-1.nqx"
NEQUIX_MP_PFT = SHARED / "models" / "nequix-mp-1-pft.nqx"
PHONONS = SHARED / "data" / "phonons"
KAPPA = SHARED / "data" / "kappa"
RELAX = SHARED / "data" / "relax"


@pytest.fixture(scope="session")
def nequix32():
    """Nequix MP (float32, as shipped)."""
    from curvax import load_nequix

    if not NEQUIX_MP.is_file():
        pytest.skip(f"{NEQUIX_MP} missing")
    return load_nequix(str(NEQUIX_MP))


@pytest.fixture(scope="session")
def nequix64(nequix32):
    """Nequix MP cast to float64 (for finite-difference checks)."""
    import jax.numpy as jnp

    return nequix32.astype(jnp.float64)


# XLA compiles on the calling thread; compiling large Nequix programs (relaxation scans,
# third-order AD) late in a long session overflowed the 8 MB main-thread stack (segfault in
# backend_compile_and_load). Each test therefore runs in a thread with a 512 MB stack.
threading.stack_size(512 * 2**20)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    error = []

    def target():
        try:
            pyfuncitem.obj(**args)
        except BaseException as e:  # re-raised on the main thread, traceback kept
            error.append(e)

    worker = threading.Thread(target=target, name=pyfuncitem.name)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return True
