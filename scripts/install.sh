#!/usr/bin/env bash
# Install curvax and its pinned dependencies into ./.venv (CPU JAX; no CUDA wheels).
# nequix is installed with --no-deps: its metadata pins jax[cuda12] on Linux, which would pull
# CUDA wheels; its runtime needs (e3nn-jax, equinox, jraph, ...) are pinned in pyproject.toml.
# GPU (NVIDIA, CUDA 12): `bash scripts/install.sh --gpu` adds the CUDA wheels of the same pinned
# JAX and checks that JAX sees the GPU(s); never run it on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
gpu=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    *) echo "install.sh: unknown option $arg (known: --gpu)" >&2; exit 2 ;;
  esac
done
stamp=.venv/.curvax-installed
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-gpu$gpu"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps nequix==0.4.5
if [ "$gpu" = 1 ]; then
  jax_version="$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
  .venv/bin/python -m pip install -q --disable-pip-version-check "jax[cuda12]==$jax_version"
  .venv/bin/python -c 'import jax; d = jax.devices(); print("JAX devices:", d); assert d[0].platform == "gpu", "no GPU visible to JAX"'
fi
echo "$want" > "$stamp"
