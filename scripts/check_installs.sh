#!/usr/bin/env bash
# Every install the README and docs name resolves with the pip that a fresh venv brings (no upgrade):
# `pip install --dry-run` of the base install and each documented extra, torch==2.13.0 first where the
# training stack comes in, as the docs say to install it. Exit 1 naming the install that does not resolve.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
"$python" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)
echo "checking the documented installs with a fresh venv's $("${pip[@]}" --version | cut -d' ' -f1-2)" >&2
failed=()
for extra in "" serve openvino "train,serve,openvino-int8" "train,static" demo dev; do
  spec="$root${extra:+[$extra]}"
  torch=()
  [[ $extra == *train* || $extra == demo || $extra == dev ]] && torch=(torch==2.13.0)
  if "${pip[@]}" install --dry-run -q --report "$work/report.json" "${torch[@]}" "$spec" 2>"$work/err"; then
    echo "  resolves: pip install ${torch[*]:+${torch[*]} }\"bertdeploy${extra:+[$extra]}\"" >&2
  else
    grep -v "is ignored: it is neither a file nor a directory" "$work/err" | tail -15 >&2
    failed+=("bertdeploy${extra:+[$extra]}")
  fi
done
if (( ${#failed[@]} )); then
  echo "these installs do not resolve with a fresh venv's pip: ${failed[*]}" >&2
  exit 1
fi
