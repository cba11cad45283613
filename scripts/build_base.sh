#!/usr/bin/env bash
# A Debian base image made from Debian's packages, for machines that reach no container registry: debootstrap
# (minbase) with python3, python3-venv and ca-certificates, committed with buildah. Root, buildah and debootstrap
# (Debian packages). Kept between runs in buildah's storage: an image already there is reused (FORCE=1 rebuilds).
# Environment: TAG (localhost/bertdeploy-base:bookworm), SUITE (bookworm), MIRROR (http://deb.debian.org/debian),
# STORAGE_DRIVER (vfs). Prints the image's name.
set -euo pipefail
tag=${TAG:-localhost/bertdeploy-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
if [[ ${FORCE:-0} != 1 ]] && "${buildah[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
rootfs=$(mktemp -d)
container=
cleanup() { rm -rf "$rootfs"; [[ -z $container ]] || "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "debootstrap $suite (minbase, python3) from $mirror: a few minutes" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" >&2
# what a slim image leaves out too: package caches, documentation (each package's copyright file stays), manual
# pages and translations
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/dev/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
container=$("${buildah[@]}" from scratch)
"${buildah[@]}" copy "$container" "$rootfs" / >/dev/null
"${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh \
  --label "org.opencontainers.image.description=Debian $suite minbase with python3 (debootstrap)" "$container"
"${buildah[@]}" commit --quiet "$container" "$tag" >/dev/null
echo "$tag"
