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
