"""The C kernels compile for every class of x86-64 CPU fastbark meets, not only for the one running the tests.

The library is built with -march=native, so the AVX-512, AVX512-VNNI, AVX-VNNI and AVX512-BF16 branches of
native/*.h compile only on machines that have them. Here each is compiled for a named CPU instead. Their bits
are checked where they run, when the library is first built there (library.py, int8.py, decode_step.py).

Every build this machine can run also runs: all of those first-use checks, and a tiny engine in float32, int8 and
int4 on it (`native_probe.py`, in its own process). The plain x86-64 build takes the portable branches of the
kernels (no AVX2), the code an ARM or older x86 machine compiles: on an AVX2 machine they would otherwise never run.
"""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastbark.backends.cpu.library import FLAGS, NATIVE

# (-march, instructions its build must contain): AVX2 only; Intel laptops with AVX-VNNI; AVX-512 without and
# with VNNI; AMX servers with AVX512-BF16
TARGETS = [("x86-64", []), ("haswell", []), ("znver3", []), ("alderlake", ["vpdpbusd"]), ("skylake-avx512", []),
           ("icelake-server", ["vpdpbusd"]), ("sapphirerapids", ["vpdpbusd", "vdpbf16ps"])]

x86_64 = pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("cc") is None,
                            reason="needs an x86-64 C compiler")

# 64-bit ARM (Raspberry Pi 4; Pi 5, Graviton 2-3, Ampere; Graviton 4): the same sources, through the portable
# branches, must compile, with the float32 products on NEON or SVE (fmla). Built with a cross compiler where this is
# not an ARM machine (CI installs gcc-aarch64-linux-gnu); not run here.
ARM_TARGETS = ["armv8-a", "armv8.2-a+dotprod", "armv9-a"]
ARM_CC = "cc" if platform.machine() == "aarch64" else "aarch64-linux-gnu-gcc"
ARM_OBJDUMP = "objdump" if platform.machine() == "aarch64" else "aarch64-linux-gnu-objdump"


@pytest.mark.parametrize("march", ARM_TARGETS)
def test_the_kernels_compile_for_arm64(march, tmp_path):
    if shutil.which(ARM_CC) is None:
        pytest.skip(f"no 64-bit ARM C compiler ({ARM_CC})")
    flags = [f"-march={march}" if f == "-march=native" else f for f in FLAGS]
    out = tmp_path / f"kernels-{march}.so"
    built = subprocess.run([ARM_CC, *flags, *map(str, sorted(NATIVE.glob("*.c"))), "-o", str(out), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    if shutil.which(ARM_OBJDUMP):
        code = subprocess.run([ARM_OBJDUMP, "-d", str(out)], capture_output=True, text=True, timeout=120).stdout
        assert re.search(r"\tfml?ad?\s+(v\d+\.4s|z\d+\.s)", code), f"{march}: the float32 products are not on NEON or SVE"


@x86_64
@pytest.mark.parametrize("march, instructions", TARGETS)
def test_the_kernels_compile_for(march, instructions, tmp_path):
    flags = [f"-march={march}" if f == "-march=native" else f for f in FLAGS]
    out = tmp_path / f"kernels-{march}.so"
    built = subprocess.run(["cc", *flags, *map(str, sorted(NATIVE.glob("*.c"))), "-o", str(out), "-lm"],
                           capture_output=True, text=True, timeout=300)
    if built.returncode and f"-march={march}" in built.stderr and "bad value" in built.stderr:
        pytest.skip(f"this compiler does not know -march={march}")
    assert built.returncode == 0, built.stderr
    if instructions and shutil.which("objdump"):
        code = subprocess.run(["objdump", "-d", str(out)], capture_output=True, text=True, timeout=120).stdout
        assert all(name in code for name in instructions), f"{march}: no {instructions} in the build"


# what a tiny engine on the build must show: the C one-call step in both decode stages, no kernel left out
KERNEL_FALLBACKS = ("C kernels:", "int8 C kernels", "int4 C kernel", "one-call decode step")


@x86_64
@pytest.mark.parametrize("march", [march for march, _ in TARGETS])
def test_the_kernels_pass_their_checks_when_built_for(march, hub_dir, tmp_path):
    probe = subprocess.run([sys.executable, str(Path(__file__).with_name("native_probe.py")), march, str(hub_dir)],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    if probe.returncode == -signal.SIGILL:
        pytest.skip(f"this CPU cannot run a -march={march} build")
    if probe.returncode and "bad value" in probe.stderr:
        pytest.skip(f"this compiler does not know -march={march}")
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["f32"], result["why"]
    checks = ["int8", "int4", "step_f32", "step_int8", "step_int4"] + \
        (["step_bf16", "attention_bf16"] if result["has_bf16"] else [])
    assert all(result[c] for c in checks), {c: result[c] for c in checks}
    for mode in ("float32", "int8", "int4"):
        engine = result[f"engine_{mode}"]
        assert engine["decode_steps"] == ["fused-c"], (mode, engine)
        assert not [f for f in engine["fallbacks"] if f.startswith(KERNEL_FALLBACKS)], (mode, engine)
        assert engine["finite"] and engine["batch_equals_alone"], (mode, engine)


# ---------------------------------------------------------------- 64-bit ARM, run under an emulator
# native_driver.c runs every C entry point on fixed inputs; the same program built for 64-bit ARM runs under
# qemu-user, as a CPU without the byte dot product (Cortex-A72: Raspberry Pi 4, Graviton 1) and as one with it
# (qemu's "max": SDOT). Exact integer arithmetic must give this machine's bits; the float arithmetic its values
# within float32 rounding (other compilers fuse other multiply-adds).
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
ARM_SYSROOT = Path("/usr/aarch64-linux-gnu")
EXACT = ("s8 ", "quantized", "q4 weight", "step int8 keys", "step int8 bf16 cache keys",  # integer sums, same rounding
         "invariant")  # 1 where each row alone, on one thread, had its bits in the batch
ARM_RUNS = [("armv8-a", "cortex-a72", None), ("armv8.2-a+dotprod", "max", "sdot")]


def driver_outputs(path: Path) -> dict:
    data, out, i = path.read_bytes(), {}, 0
    while i < len(data):  # records: a 32-byte name, an int64 count, the float32 values
        name, n = data[i: i + 32].rstrip(b"\0").decode(), int(np.frombuffer(data[i + 32: i + 40], np.int64)[0])
        out[name] = np.frombuffer(data[i + 40: i + 40 + 4 * n], np.float32)
        i += 40 + 4 * n
    return out


def run_driver(compiler: str, march: str, tmp_path: Path, emulate: list[str] | None = None) -> dict:
    exe, out = tmp_path / f"driver-{march}", tmp_path / f"out-{march}.bin"
    flags = [f"-march={march}" if f == "-march=native" else f for f in FLAGS if f not in ("-shared", "-fPIC")]
    built = subprocess.run([compiler, *flags, str(Path(__file__).with_name("native_driver.c")),
                            *map(str, sorted(NATIVE.glob("*.c"))), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([*(emulate or []), str(exe), str(out)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    return driver_outputs(out)


@x86_64
@pytest.mark.parametrize("march, cpu, instruction", ARM_RUNS)
def test_the_kernels_on_emulated_arm64_compute_what_they_compute_here(march, cpu, instruction, tmp_path):
    if shutil.which(ARM_CC) is None or QEMU is None or not (ARM_SYSROOT / "lib").is_dir():
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    here = run_driver("cc", "native", tmp_path)
    arm = run_driver(ARM_CC, march, tmp_path, [QEMU, "-L", str(ARM_SYSROOT), "-cpu", cpu])
    assert arm.keys() == here.keys() and len(here) > 40
    invariant = [name for name in here if name.startswith("invariant")]
    assert len(invariant) == 11 and all(here[n][0] == 1 for n in invariant), {n: here[n][0] for n in invariant}
    for name, want in here.items():
        got = arm[name]
        if name.startswith(EXACT):
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
        else:
            assert np.abs(got.astype(np.float64) - want).max() <= 1e-5 * np.abs(want).max(), name
    if instruction and shutil.which(ARM_OBJDUMP):
        code = subprocess.run([ARM_OBJDUMP, "-d", str(tmp_path / f"driver-{march}")], capture_output=True,
                              text=True, timeout=120).stdout
        assert f"\t{instruction}\t" in code, f"{march}: no {instruction}"
