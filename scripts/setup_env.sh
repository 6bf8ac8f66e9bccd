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
# fairseq's C++ extensions compile on one core for minutes: build them (they need only torch, numpy
# and cython) while the other requirements install beside them.
"${pip[@]}" $(grep -E '^(torch|numpy|cython|setuptools|wheel)\b' requirements.txt | tr -d ' ')
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  "${pip[@]}" --no-build-isolation --no-deps --no-cache-dir fairseq-fixed==0.12.3.1 &
  fairseq_build=$!
fi
"${pip[@]}" -r requirements.txt
if [ -n "${fairseq_build:-}" ]; then wait "$fairseq_build"; fi
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
echo "$want" > "$stamp"
