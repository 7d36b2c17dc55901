#!/usr/bin/env bash
# Install curvax and its pinned dependencies into ./.venv (CPU JAX; no CUDA wheels).
# nequix is installed with --no-deps: its metadata pins jax[cuda12] on Linux, which would pull
# CUDA wheels; its runtime needs (e3nn-jax, equinox, jraph, ...) are pinned in pyproject.toml.
# For a GPU, afterwards: .venv/bin/pip install "jax[cuda12]==0.10.2".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.curvax-installed
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps nequix==0.4.5
echo "$want" > "$stamp"
