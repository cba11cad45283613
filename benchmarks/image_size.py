"""The server image's size: without and with OpenVINO, on the base given, and what the runtime install adds.

Builds deploy/Containerfile twice with scripts/build_image.sh (OPENVINO=0 and 1) on BASE (default: the Debian
base scripts/build_base.sh makes from Debian's packages; no registry is needed), and records each image's size,
the base's, and the largest packages of the runtime install, with the machine. Needs root and buildah.
Writes benchmarks/results/image_size.json.

    python benchmarks/image_size.py [--base IMAGE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from bertdeploy.host import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "image_size.json"
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


def size_mb(image: str) -> float:
    """The image's size as `buildah images` reports it (uncompressed, decimal units, e.g. "367 MB")."""
    listed = json.loads(subprocess.run([*BUILDAH, "images", "--json", image], check=True, capture_output=True,
                                       text=True).stdout)
    number, unit = listed[0]["size"].split()
    return round(float(number) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit], 1)


def build(base: str, tag: str, openvino: bool) -> float:
    env = {**os.environ, "BASE": base, "TAG": tag, "OPENVINO": str(int(openvino)), "ENGINE": "buildah"}
    subprocess.run(["bash", str(ROOT / "scripts" / "build_image.sh")], env=env, check=True, capture_output=True)
    return size_mb(tag)


def largest_packages(image: str, count: int = 8) -> dict[str, float]:
    """MB on disk of the runtime install's largest top-level folders in site-packages."""
    container = subprocess.run([*BUILDAH, "from", "--quiet", "--pull-never", image], check=True,
                               capture_output=True, text=True).stdout.strip()
    try:
        root = Path(subprocess.run([*BUILDAH, "mount", container], check=True, capture_output=True,
                                   text=True).stdout.strip())
        site = next((root / "opt" / "bertdeploy" / "lib").glob("python3*/site-packages"))
        sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
                 for p in site.iterdir() if p.is_dir()}
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)
    return {name: round(mb, 1) for name, mb in sorted(sizes.items(), key=lambda kv: -kv[1])[:count]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the base image (default: scripts/build_base.sh's)")
    args = parser.parse_args()
    base = args.base or subprocess.run(["bash", str(ROOT / "scripts" / "build_base.sh")], check=True,
                                       capture_output=True, text=True).stdout.strip()
    images = {"runtime (serve)": ("localhost/bertdeploy:size", False),
              "runtime (serve) + OpenVINO": ("localhost/bertdeploy:size-openvino", True)}
    sizes = {name: build(base, tag, openvino) for name, (tag, openvino) in images.items()}
    result = {"machine": machine(), "base": base, "base_mb": size_mb(base), "images_mb": sizes,
              "added_by_the_runtime_install_mb": round(sizes["runtime (serve)"] - size_mb(base), 1),
              "largest_packages_mb": largest_packages(images["runtime (serve)"][0])}
    for tag, _ in images.values():
        subprocess.run([*BUILDAH, "rmi", tag], capture_output=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
