"""CMake flags for llama.cpp that match the CPU this runs on (the Makefile's build of llama-cpp-python).

ggml's own `GGML_NATIVE=ON` build crashed on a Zen 4 machine (SIGSEGV in its AMX matmul), and a
fixed AVX-512 flag set dies with SIGILL on an AVX2-only EPYC. So the build is never native and
never fixed: each instruction set is switched on exactly when /proc/cpuinfo lists it, AMX always
off. The printed line also names the CPU flags the build needs, so the wheelhouse is keyed on them.

    python3 scripts/llama_cpu_flags.py            # -DGGML_NATIVE=OFF -DGGML_AVX=ON ...
    python3 scripts/llama_cpu_flags.py --needs    # the cpuinfo flags the build will execute

Standard library only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

# ggml option -> the /proc/cpuinfo flags its compiler switches need (ggml-cpu/CMakeLists.txt:
# GGML_AVX512 adds -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Each needs its base set as well (ggml only adds the extension's own switch).
REQUIRES: dict[str, str] = {
    "GGML_AVX2": "GGML_AVX",
    "GGML_FMA": "GGML_AVX",
    "GGML_F16C": "GGML_AVX",
    "GGML_AVX_VNNI": "GGML_AVX2",
    "GGML_AVX512": "GGML_AVX2",
    "GGML_AVX512_VBMI": "GGML_AVX512",
    "GGML_AVX512_VNNI": "GGML_AVX512",
    "GGML_AVX512_BF16": "GGML_AVX512",
}
ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def enabled(flags: set[str]) -> list[str]:
    on = [opt for opt, need in OPTIONS.items() if all(f in flags for f in need)]
    # Drop an extension whose base set is missing (a hypervisor may hide one and not the other).
    changed = True
    while changed:
        changed = False
        for opt in list(on):
            base = REQUIRES.get(opt)
            if base and base not in on:
                on.remove(opt)
                changed = True
    return on


def cmake_args(flags: set[str]) -> str:
    on = enabled(flags)
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{opt}={'ON' if opt in on else 'OFF'}" for opt in OPTIONS]
    args += [f"-D{opt}=OFF" for opt in ALWAYS_OFF]
    return " ".join(args)


def needs(flags: set[str]) -> str:
    return " ".join(sorted({f for opt in enabled(flags) for f in OPTIONS[opt]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--needs", action="store_true", help="print the CPU flags the build needs instead")
    parser.add_argument("--cpuinfo", type=Path, default=Path("/proc/cpuinfo"))
    args = parser.parse_args()
    if platform.machine() not in ("x86_64", "AMD64"):
        # ggml's defaults are right for other architectures; nothing x86 to switch on.
        print("" if args.needs else "-DGGML_NATIVE=OFF")
        return 0
    flags = cpu_flags(args.cpuinfo)
    print(needs(flags) if args.needs else cmake_args(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
