#!/usr/bin/env bash
# Every install the README and docs name installs with the pip that a fresh venv brings (no upgrade), and
# `pip check` finds nothing broken in it: the base install and each documented extra, each in a fresh venv,
# torch==2.13.0 first where the training stack comes in, as the docs say to install it. Exit 1 naming the
# install that does not resolve or whose requirements pip check finds broken.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
echo "checking the documented installs with a fresh venv's $("$python" -m venv "$work/probe" && \
  "$work/probe/bin/python" -m pip --version | cut -d' ' -f1-2)" >&2
failed=()
for extra in "" serve openvino "train,serve,openvino-int8" "train,static" demo dev; do
  spec="$root${extra:+[$extra]}"
  torch=()
  [[ $extra == *train* || $extra == demo || $extra == dev ]] && torch=(torch==2.13.0)
  rm -rf "$work/venv"
  "$python" -m venv "$work/venv"
  pip=("$work/venv/bin/python" -m pip)
  if "${pip[@]}" install -q "${torch[@]}" "$spec" 2>"$work/err" && "${pip[@]}" check >"$work/check" 2>&1; then
    echo "  installs, pip check clean: pip install ${torch[*]:+${torch[*]} }\"bertdeploy${extra:+[$extra]}\"" >&2
  else
    grep -v "is ignored: it is neither a file nor a directory" "$work/err" | tail -15 >&2
    cat "$work/check" >&2 2>/dev/null || true
    failed+=("bertdeploy${extra:+[$extra]}")
  fi
done
rm -rf "$work/venv"
if (( ${#failed[@]} )); then
  echo "these installs fail or leave broken requirements with a fresh venv's pip: ${failed[*]}" >&2
  exit 1
fi
