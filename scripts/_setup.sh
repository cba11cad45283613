# Sourced by demo.sh and test.sh: make .venv if missing, install torch==2.13.0 first (the CPU
# build; an unpinned torch pulls several GB of CUDA packages), then this package with the extra
# named in $1. A stamp of pyproject.toml makes a second run skip the install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extra=$1
python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip  # a venv's own pip may be years old; the installs resolve with it too
fi
stamp=".venv/.bertdeploy-$extra.stamp"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "installing torch==2.13.0" >&2
    .venv/bin/python -m pip install -q torch==2.13.0
  fi
  echo "installing bertdeploy[$extra]" >&2
  .venv/bin/python -m pip install -q -e ".[$extra]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  .venv/bin/python -c "import bertdeploy, torch, transformers, onnx, onnxruntime" \
    || { echo "the install failed; see the pip output above" >&2; exit 1; }
  .venv/bin/python -m pip check 2>&1 | grep -v "is ignored: it is neither" >&2 \
    || { echo "pip check found broken requirements in .venv (above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
