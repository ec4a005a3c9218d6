"""The C kernels compile for every class of x86-64 CPU fastbark meets, not only for the one running the tests.

The library is built with -march=native, so the AVX-512, AVX512-VNNI, AVX-VNNI and AVX512-BF16 branches of
native/*.h compile only on machines that have them. Here each is compiled for a named CPU instead. Their bits
are checked where they run, when the library is first built there (library.py, int8.py, decode_step.py).
"""

import platform
import shutil
import subprocess

import pytest

from fastbark.backends.cpu.library import FLAGS, NATIVE

# (-march, instructions its build must contain): AVX2 only; Intel laptops with AVX-VNNI; AVX-512 without and
# with VNNI; AMX servers with AVX512-BF16
TARGETS = [("x86-64", []), ("haswell", []), ("znver3", []), ("alderlake", ["vpdpbusd"]), ("skylake-avx512", []),
           ("icelake-server", ["vpdpbusd"]), ("sapphirerapids", ["vpdpbusd", "vdpbf16ps"])]

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("cc") is None,
                                reason="needs an x86-64 C compiler")


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
