#!/usr/bin/env bash
# The server image built and run as users run it (.ci/run calls this after the tests): a Debian base from Debian's
# packages (scripts/build_base.sh; kept in buildah's storage between runs), the image from deploy/Containerfile
# (scripts/build_image.sh, wheels built here, nothing fetched inside), then scripts/check_image.py runs the image's
# own entrypoint on the export the test run saved ($BERTDEPLOY_TEST_ARTIFACTS/onnx) and checks it from here.
# Needs root; installs buildah and debootstrap from Debian's packages where they are missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BERTDEPLOY_TEST_ARTIFACTS:?set it and run scripts/test.sh first: its tests save the export there}"
python=${PYTHON:-$root/.venv/bin/python}
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "installing buildah and debootstrap (Debian packages)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi
base=$(bash "$root/scripts/build_base.sh")
tag=localhost/bertdeploy:ci
built=$(BASE=$base TAG=$tag ENGINE=buildah PYTHON=$python bash "$root/scripts/build_image.sh")
echo "built $built" >&2
"$python" "$root/scripts/check_image.py" "$tag" "$BERTDEPLOY_TEST_ARTIFACTS/onnx"
buildah --storage-driver "${STORAGE_DRIVER:-vfs}" rmi "$tag" >/dev/null
# the layers earlier builds left untagged (housekeeping: one held by a container of your own is left)
buildah --storage-driver "${STORAGE_DRIVER:-vfs}" rmi --prune >/dev/null 2>&1 || true
