#!/usr/bin/env bash
# The runtime install alone, as an app or a server image has it: a fresh venv with
# `pip install ".[serve]"` and the test tools, where torch, transformers, Optimum, datasets,
# accelerate and onnx must not import, running the runtime wing's tests (tests/runtime, tests/predict,
# tests/serve: the predictor, routing, `predict` and `serve`) against the export a full run
# (scripts/test.sh) saved in $BERTDEPLOY_TEST_ARTIFACTS; a test there that needs PyTorch itself skips.
# Extra args go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BERTDEPLOY_TEST_ARTIFACTS:?set it and run scripts/test.sh first: its tests save the export there}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
echo "creating a runtime-only venv with $($python --version)" >&2
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$root[serve]" pytest httpx hypothesis schemathesis "tritonclient[http]" \
  2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$work/venv/bin/python" -m pip check | grep -v "is ignored: it is neither" >&2  # exit 1 on a broken requirement
cd "$work"  # import the installed package, not the source tree
"$work/venv/bin/python" - <<'PY'
import importlib.util, sys
import bertdeploy
heavy = [m for m in ("torch", "transformers", "optimum", "datasets", "accelerate", "onnx") if importlib.util.find_spec(m)]
assert not heavy, f"the runtime install has {heavy}"
assert "site-packages" in bertdeploy.__file__, bertdeploy.__file__
print("runtime install: no torch, transformers, optimum, datasets, accelerate or onnx;", bertdeploy.__file__,
      file=sys.stderr)
PY
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then echo "torch imports in the runtime install" >&2; exit 1; fi
printf 'text,label\ngood,positive\nbad,negative\n' > "$work/train.csv"
for command in finetune export bench; do  # the build commands name the extra, in one line, exit 2
  case $command in
    finetune) args=(--model m --train-file "$work/train.csv" --output-dir "$work/out") ;;
    export) args=("$BERTDEPLOY_TEST_ARTIFACTS/onnx" --output-dir "$work/out") ;;
    bench) args=("$BERTDEPLOY_TEST_ARTIFACTS/onnx") ;;
  esac
  status=0
  said=$("$work/venv/bin/bertdeploy" "$command" "${args[@]}" 2>&1) || status=$?
  if [[ $status != 2 || $said != "Error: $command needs the training stack"*"pip install '.[train]' in its checkout)" ]]; then
    echo "bertdeploy $command without the training stack: exit $status, $said" >&2
    exit 1
  fi
done
"$work/venv/bin/pytest" -c "$root/pyproject.toml" --rootdir "$root" -p no:cacheprovider \
  "$root/tests/runtime" "$root/tests/predict" "$root/tests/serve" "$@"
