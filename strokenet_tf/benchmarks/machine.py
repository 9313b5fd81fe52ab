"""What the benchmarks ran on: the CPU's theoretical fp32 peak (with its derivation), the GPU, peak memory.

The CPU peak is `cores x fp32 lanes per FMA unit x FMA units per core x 2 FLOP per FMA x clock`, read from
/proc/cpuinfo (or lscpu): the vector width from the AVX-512F / AVX2+FMA flags, the FMA units from the
microarchitecture (an assumption, printed), the clock from cpufreq's maximum when the kernel exposes it, else
/proc/cpuinfo's "cpu MHz" (in a VM usually the nominal TSC clock: turbo may run faster, so the peak is then a
lower bound and efficiencies above it are possible). A large `tf.linalg.matmul` measures what oneDNN/Eigen
reach on the same cores, as a practical ceiling next to the theoretical one.

Example (the output depends on the machine, so the doctests do not run it):
```python
peak = cpu_peak()
print(peak["derivation"])
```
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time

import numpy as np
import tensorflow as tf

_CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """First value of every "key : value" line of /proc/cpuinfo (the first processor's block)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except OSError:
        return ""


def fma_datapath(vendor: str, family: int, flags: set[str]) -> tuple[int, int, str]:
    """(fp32 lanes per FMA instruction as executed, FMA units per core, why) for one x86 core.

    Assumptions (vendor optimisation manuals): Intel server cores with AVX-512 have two 512-bit FMA units
    (some Xeon Bronze/Silver have one: the peak is then 2x too high); AMD Zen 1-4 (families 0x17, 0x19) have two
    FMA pipes of 256 bits (Zen 4 splits AVX-512 into two 256-bit halves), Zen 5 (0x1a) two of 512 bits; any
    AVX2+FMA core two 256-bit units.
    """
    if "avx512f" in flags and vendor == "AuthenticAMD" and family < 0x1A:
        return 8, 2, "AVX-512 on AMD Zen 4 or older runs on 256-bit FMA pipes: 8 fp32 lanes x 2 FMA pipes"
    if "avx512f" in flags:
        return 16, 2, "AVX-512F: 16 fp32 lanes x 2 FMA units (assumed; 1 on some Xeon Bronze/Silver)"
    if "avx2" in flags and "fma" in flags:
        return 8, 2, "AVX2+FMA: 8 fp32 lanes x 2 FMA units"
    if "avx" in flags:
        return 8, 1, "AVX without FMA: 8 fp32 lanes, separate add and multiply counted as 1 FMA unit"
    return 4, 1, "SSE: 4 fp32 lanes, 1 unit (no FMA flags found)"


def cpu_peak(ghz: float | None = None, cpuinfo: str | None = None) -> dict:
    """Theoretical fp32 peak of the CPU cores this process may use, in GFLOP/s, with its derivation.

    Args:
        ghz: clock to assume (e.g. the all-core turbo from the vendor's data sheet); default: cpufreq's maximum,
            else /proc/cpuinfo's "cpu MHz".
        cpuinfo: /proc/cpuinfo text (tests pass their own).
    """
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    fields = _cpuinfo_fields(text)
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "unknown")
    family = int(fields.get("cpu family", "0") or 0)
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    siblings, cores_per_package = int(fields.get("siblings", 0) or 0), int(fields.get("cpu cores", 0) or 0)
    threads_per_core = max(1, siblings // cores_per_package) if siblings and cores_per_package else 1
    cores = max(1, logical // threads_per_core)
    lanes, units, why = fma_datapath(vendor, family, flags)
    if ghz is not None:
        clock_ghz, clock_source = float(ghz), "given (--cpu_ghz)"
    elif _read(_CPUFREQ_MAX).strip():
        clock_ghz, clock_source = int(_read(_CPUFREQ_MAX)) / 1e6, f"{_CPUFREQ_MAX} (max turbo)"
    else:
        mhz = float(fields.get("cpu MHz", "0") or 0)
        clock_ghz = mhz / 1e3 if mhz > 0 else 2.0
        clock_source = ("/proc/cpuinfo 'cpu MHz' (no cpufreq: in a VM this is the nominal clock; turbo may be "
                        "higher, so this peak is a lower bound)") if mhz > 0 else "assumed 2.0 GHz (no clock found)"
    flop_per_cycle = lanes * units * 2
    gflops = cores * flop_per_cycle * clock_ghz
    derivation = (
        f"{fields.get('model name', platform.processor() or 'unknown CPU')} ({vendor}, family {family:#x}): "
        f"{cores} core(s) usable ({logical} logical CPU(s), {threads_per_core} thread(s)/core) x {lanes} lanes x "
        f"{units} FMA x 2 FLOP = {cores * flop_per_cycle} FLOP/cycle x {clock_ghz:.3f} GHz = {gflops:.1f} GFLOP/s "
        f"fp32 [{why}; clock from {clock_source}]"
    )
    return {
        "model_name": fields.get("model name", "unknown"),
        "vendor": vendor,
        "family": family,
        "logical_cpus": logical,
        "cores": cores,
        "lanes": lanes,
        "fma_units": units,
        "clock_ghz": clock_ghz,
        "clock_source": clock_source,
        "peak_gflops": gflops,
        "derivation": derivation,
    }


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of a `size` x `size` matmul in a tf.function (the practical dense-math ceiling)."""
    a = tf.random.stateless_normal([size, size], seed=(0, 1))
    b = tf.random.stateless_normal([size, size], seed=(0, 2))
    product = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))
    product(a, b).numpy()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(seconds)) / 1e9


def gpu_description() -> dict | None:
    """Name and compute capability of the first visible GPU, or None without one."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return {"count": len(gpus), "name": details.get("device_name", gpus[0].name),
            "compute_capability": list(details.get("compute_capability", ()))}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    /proc/self/status VmHWM where it exists: Linux keeps `ru_maxrss` across fork and exec, so a subprocess of a
    large parent would report the parent's peak; VmHWM belongs to the process's own address space.
    """
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0  # bytes / KiB


def environment() -> dict:
    """Versions and threading of this process (part of every result, so runs compare like with like)."""
    import keras

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)"),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def short_cpu_name(peak: dict) -> str:
    """e.g. "AMD EPYC, 2 cores" for table headers."""
    name = re.sub(r"\s+", " ", peak["model_name"])
    return f"{name}, {peak['cores']} core(s)"
