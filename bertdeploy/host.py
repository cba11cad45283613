"""The machine this process runs on, read once: the CPUs it may use, the CPU's feature flags (bf16, AMX,
VNNI), and the description every result file records beside its figures. Standard library only.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")
VERSIONS = ("bertdeploy", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "onnx", "onnxscript",
            "tokenizers", "numpy", "openvino", "nncf", "ray")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask and the cgroup CPU quota, not the host's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return count


def resident_bytes() -> int | None:
    """This process's resident memory now, in bytes (None where /proc is not there to tell)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def grown(work, *args) -> tuple[object, int | None]:
    """`work(*args)`, and the bytes this process's resident memory grew by meanwhile (None where it cannot tell)."""
    before = resident_bytes()
    result = work(*args)
    after = resident_bytes()
    return result, None if before is None or after is None else max(0, after - before)


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    lines = _cpuinfo().splitlines()
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))),
                    []))


def machine(device: str = "cpu", threads: int | None = None) -> dict:
    """What the figures were measured on: CPU model and flags, cores (and the threads used, when given), memory,
    GPU, library versions."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_flags": [], "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(), "memory_gb": None, "os": platform.platform(),
            "python": platform.python_version()}
    if threads is not None:
        info["threads"] = threads
    try:
        model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                      if line.startswith("model name")), None)
        flags = cpu_flags()
        info["cpu"] = model or info["cpu"]
        info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
        total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
        info["memory_gb"] = round(total_kb / 1024 ** 2, 1)
    except (OSError, StopIteration):
        pass
    info["versions"] = {}
    for package in VERSIONS:
        try:
            info["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if device == "cuda":
        info.update(gpu())
    return info


def gpu() -> dict:
    """The first GPU's name and the highest CUDA version its driver supports, from nvidia-smi (empty without one;
    bench records the CUDA version PyTorch was built for instead)."""
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.splitlines()
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"gpu": name[0].strip() if name else None, "cuda": cuda.group(1) if cuda else None}
