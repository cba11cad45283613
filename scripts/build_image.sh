#!/usr/bin/env bash
# Build the server image (deploy/Containerfile) offline: the wheels of bertdeploy[serve] (and OpenVINO) are built
# on this machine, for the base image's Python and CPU architecture, and the image installs from them alone
# (no index, no network inside the build: the air-gapped recipe). With buildah or docker, whichever is there.
# Environment: BASE (docker.io/library/python:3.12-slim; scripts/build_base.sh makes one from Debian's packages),
# TAG (bertdeploy:latest), OPENVINO=1 (add OpenVINO), MODEL=DIR (bake that export in at /models/model),
# ENGINE (buildah or docker; default: a running docker, else buildah), STORAGE_DRIVER (buildah's: vfs),
# PYTHON (this machine's, for pip: python3). Prints the image's name and size.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base=${BASE:-docker.io/library/python:3.12-slim}
tag=${TAG:-bertdeploy:latest}
python=${PYTHON:-python3}
engine=${ENGINE:-}
if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v buildah >/dev/null; then engine=buildah
  else echo "build_image.sh: neither a running docker nor buildah; install one (Debian: apt-get install buildah)" >&2; exit 2
  fi
fi
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
if [[ -n ${MODEL:-} && ! -f $MODEL/manifest.json ]]; then
  echo "build_image.sh: MODEL=$MODEL has no manifest.json; give an export directory (bertdeploy export)" >&2; exit 2
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/wheels" "$context/model"

# The base image's Python and architecture decide which wheels to fetch.
probe='import platform, sys; print(f"{sys.version_info[0]}{sys.version_info[1]}", platform.machine())'
if [[ $engine == docker ]]; then
  found=$(docker run --rm --entrypoint python3 "$base" -c "$probe")
else
  container=$("${buildah[@]}" from --quiet "$base")
  found=$("${buildah[@]}" run --isolation chroot "$container" -- python3 -c "$probe")
  "${buildah[@]}" rm "$container" >/dev/null
fi
read -r pyver arch <<< "$found"
echo "base $base: CPython ${pyver:0:1}.${pyver:1} on $arch; building wheels" >&2

"$python" -m pip wheel -q --no-deps --wheel-dir "$context/wheels" "$root" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
wheel=$(ls "$context"/wheels/bertdeploy-*.whl)
extras=serve
[[ ${OPENVINO:-0} == 1 ]] && extras=serve,openvino
platforms=()
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
platforms+=(--platform "manylinux2014_${arch}")
"$python" -m pip download -q --dest "$context/wheels" --only-binary=:all: --implementation cp \
  --python-version "$pyver" --abi "cp$pyver" --abi abi3 --abi none "${platforms[@]}" "$wheel[$extras]" 2>&1 \
  | grep -v "is ignored: it is neither" >&2 || true
ls "$context"/wheels/onnxruntime-*.whl >/dev/null  # fails here, not inside the build, if pip found no wheels
[[ -n ${MODEL:-} ]] && cp -R "$MODEL"/. "$context/model/"

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/bertdeploy/version.py")
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
args=(--build-arg "BASE=$base" --build-arg "OPENVINO=${OPENVINO:-0}" --build-arg "VERSION=$version"
      --build-arg "REVISION=$revision" -f "$root/deploy/Containerfile" -t "$tag")
if [[ $engine == docker ]]; then
  docker build -q "${args[@]}" "$context" >&2
  size=$(docker image inspect --format '{{.Size}}' "$tag")
else
  "${buildah[@]}" bud --quiet --isolation chroot --pull-never "${args[@]}" "$context" >&2
  size=$("${buildah[@]}" inspect --type image --format '{{.Size}}' "$tag" 2>/dev/null || true)
  [[ $size =~ ^[0-9]+$ ]] || size=$("${buildah[@]}" images --noheading --format '{{.Size}}' "$tag")
fi
if [[ $size =~ ^[0-9]+$ ]]; then size="$((size / 1000000)) MB"; fi
echo "$tag $size"
