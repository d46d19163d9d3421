#!/usr/bin/env bash
# Set up patchfold in ./.venv (CPU build of PyTorch first, so no multi-GB CUDA download), then:
#   ./run.sh        run the demo on sample_images/ (unfold -> fold -> compare, stats, divisor picture)
#   ./run.sh test   lint (ruff check, ruff format --check), then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PATCHFOLD_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "installing PyTorch 2.13.0 (CPU build)..." >&2
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
if ! "$PY" -c "import patchfold.cli, pytest, hypothesis" >/dev/null 2>&1 || [ pyproject.toml -nt "$VENV/.patchfold-installed" ]; then
  echo "installing patchfold and its test tools..." >&2
  "$PY" -m pip install -q --disable-pip-version-check -e ".[dev,tiff,distributed,zarr,onnx,slide]"
  touch "$VENV/.patchfold-installed"
fi
export PATH="$PWD/$VENV/bin:$PATH"

case "${1:-demo}" in
  test)
    shift || true
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$PY" -m pytest "$@"
    ;;
  demo)
    bash demo/demo.sh
    ;;
  *)
    echo "usage: ./run.sh [demo|test [pytest args]]" >&2
    exit 2
    ;;
esac
