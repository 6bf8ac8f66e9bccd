#!/usr/bin/env bash
# Create (or reuse) .venv with everything fairseq_ext needs, offline-safe afterwards.
# fairseq 0.12.2 does not import on Python 3.11; fairseq-fixed provides the same `fairseq`
# package and must be installed with --no-deps --no-build-isolation (its setup.py imports torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.fairseq_ext-installed"
want=$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$VENV/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip
# fairseq's six extensions take about 4 CPU-minutes, three of them against torch's headers (about
# 70 s each). Build them (they need only torch, numpy and cython) while the other requirements
# install beside them, two at a time: setuptools' `build_ext --parallel` through DIST_EXTRA_CONFIG.
# torch's ninja backend writes one build.ninja per build directory, which parallel builds clobber,
# so a `ninja` that fails its version check on PATH makes torch fall back to its distutils backend.
# fairseq's own setup.py builds the same files either way (about 1 minute less wall time).
"${pip[@]}" $(grep -E '^(torch|numpy|cython|setuptools|wheel)\b' requirements.txt | tr -d ' ')
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  build_cfg=$(mktemp -d)
  printf '[build_ext]\nparallel = 2\n' > "$build_cfg/setup.cfg"
  printf '#!/bin/sh\nexit 1\n' > "$build_cfg/ninja" && chmod +x "$build_cfg/ninja"
  PATH="$build_cfg:$PATH" DIST_EXTRA_CONFIG="$build_cfg/setup.cfg" \
    "${pip[@]}" --no-build-isolation --no-deps --no-cache-dir fairseq-fixed==0.12.3.1 &
  fairseq_build=$!
fi
"${pip[@]}" -r requirements.txt
if [ -n "${fairseq_build:-}" ]; then wait "$fairseq_build"; fi
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
echo "$want" > "$stamp"
