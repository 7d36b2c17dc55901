"""Atomic file writes: the one way curvax writes a result or checkpoint.

    atomic_write(path, "text")                     # str or bytes
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))   # any writer given a path

The content goes to a temporary file beside `path` (same folder, so the same file system),
is flushed to disk, and then replaces `path` with `os.replace`: a kill at any moment leaves
either the old file or the new one, never a truncated one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from curvax import parallel


def atomic_write(path, content: str | bytes | Callable[[str], object]) -> Path:
    """Write `content` to `path` atomically (see module doc); returns `path`.

    A callable is called with the temporary path (a str ending in `path`'s suffix, so writers
    that choose a format by extension, such as `np.savez` or `ase.io.write`, keep working).
    In a multi-process run (`curvax.parallel.initialize_distributed`) only process 0 writes."""
    path = Path(path)
    if not parallel.is_writer():
        return path
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        if callable(content):
            content(str(tmp))
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
