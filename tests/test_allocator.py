"""curvax.allocator: freed memory is reused instead of re-faulted (measured by the page-fault count)."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

# malloc, touch and free a 64 MB buffer 20 times; print the minor page faults this took
_PROGRAM = """
import ctypes, resource, sys
from curvax import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch_and_free(n=64 << 20):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch_and_free()  # the first buffer faults in either case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], env={**environment, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_buffers_are_reused_not_refaulted():
    _, default = _faults("default")
    applied, kept = _faults("keep")
    assert applied
    assert default >= 20  # glibc's default: each buffer a fresh mmap, 16 384 faults (32 with huge pages)
    assert kept < default / 20


def test_user_settings_win():
    applied, _ = _faults("keep", MALLOC_ARENA_MAX="4")
    assert not applied


def test_the_command_line_applies_it(monkeypatch):
    from curvax import allocator, cli
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == [1]
