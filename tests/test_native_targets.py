"""The C kernels compile for every class of x86-64 CPU fastbark meets, not only for the one running the tests.

The library is built with -march=native, so the AVX-512, AVX512-VNNI, AVX-VNNI and AVX512-BF16 branches of
native/*.h compile only on machines that have them. Here each is compiled for a named CPU instead. Their bits
are checked where they run, when the library is first built there (library.py, int8.py, decode_step.py).

Every build this machine can run also runs: all of those first-use checks, and a tiny engine in float32, int8 and
int4 on it (`native_probe.py`, in its own process). The plain x86-64 build takes the portable branches of the
kernels (no AVX2), the code an ARM or older x86 machine compiles: on an AVX2 machine they would otherwise never run.
"""

import importlib.util
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
from fastbark.backends.cpu.tuning import KNOBS, defines_of

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
    checks = ["int8", "int4", "step_f32", "step_int8", "step_int4", "step_bf16"] + \
        (["attention_bf16"] if result["has_bf16"] else [])
    assert all(result[c] for c in checks), {c: result[c] for c in checks}
    for mode in ("float32", "int8", "int4"):
        engine = result[f"engine_{mode}"]
        assert engine["decode_steps"] == ["fused-c"], (mode, engine)
        assert not [f for f in engine["fallbacks"] if f.startswith(KERNEL_FALLBACKS)], (mode, engine)
        assert engine["finite"] and engine["batch_equals_alone"], (mode, engine)


# ---------------------------------------------------------------- other CPUs, run under emulators
# native_driver.c runs every C entry point on fixed inputs; the same program built for another CPU runs under an
# emulator. Exact integer arithmetic must give this machine's bits; the float arithmetic its values within float32
# rounding (other compilers fuse other multiply-adds, other branches sum in another order).
EXACT = ("s8 ", "quantized", "q4 weight", "rescale", "gelu", "step int8 keys", "step int8 bf16 cache keys",
         "step int8 int8 cache keys",  # the same rounding on every build
         "invariant")  # 1 where each row alone, on one thread, had its bits in the batch
BF16_ONLY = ("attention bf16", "has bf16")  # empty or 0 where the build has no AVX512-BF16: checked on their own
# The quantised steps round every row to int8 before each product (and the int8 caches each key and value): a float
# one build computes an ulp away from another's (other multiply-adds fused: every record differs by ~1e-7) may round
# to the next integer there, which moves the step's output by about one int8 step of one value times its weight
# (9.4e-5 of the largest output once, in "step int4 int8 cache" on arm64). Within 1e-3 of it.
QUANTISED = ("step int8", "step int4")


def driver_outputs(path: Path) -> dict:
    data, out, i = path.read_bytes(), {}, 0
    while i < len(data):  # records: a 32-byte name, an int64 count, the float32 values
        name, n = data[i: i + 32].rstrip(b"\0").decode(), int(np.frombuffer(data[i + 32: i + 40], np.int64)[0])
        out[name] = np.frombuffer(data[i + 40: i + 40 + 4 * n], np.float32)
        i += 40 + 4 * n
    return out


def build_driver(compiler: str, flags: list[str], tmp_path: Path, name: str) -> Path:
    exe = tmp_path / f"driver-{name}"
    built = subprocess.run([compiler, *flags, str(Path(__file__).with_name("native_driver.c")),
                            *map(str, sorted(NATIVE.glob("*.c"))), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return exe


def run_driver(compiler: str, flags: list[str], tmp_path: Path, name: str, emulate: list[str] | None = None,
               env: dict | None = None) -> tuple[dict, Path]:
    exe, out = build_driver(compiler, flags, tmp_path, name), tmp_path / f"out-{name}.bin"
    ran = subprocess.run([*(emulate or []), str(exe), str(out)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert ran.returncode == 0, (ran.returncode, ran.stderr[-2000:])
    return driver_outputs(out), exe


def native_flags(march: str) -> list[str]:
    return [f"-march={march}" if f == "-march=native" else f for f in FLAGS if f not in ("-shared", "-fPIC")]


def assert_computes_what_it_computes_here(got: dict, here: dict) -> None:
    assert got.keys() == here.keys() and len(here) > 60
    invariant = [name for name in here if name.startswith("invariant")]
    assert len(invariant) == 16 and all(here[n][0] == 1 for n in invariant), {n: here[n][0] for n in invariant}
    for name, want in here.items():
        got_one = got[name]
        if name.startswith(BF16_ONLY):
            continue
        if name.startswith(EXACT):
            assert np.array_equal(got_one.view(np.uint32), want.view(np.uint32)), name
        else:
            bound = 1e-3 if name.startswith(QUANTISED) else 1e-5
            assert np.abs(got_one.astype(np.float64) - want).max() <= bound * np.abs(want).max(), name


def bf16_rounded(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)


def attention_reference(qkv: np.ndarray, causal: bool, B=2, T=37, C=64, H=2) -> np.ndarray:
    """native_driver.c's attention, in float64 from q, k, v rounded to bfloat16: (B, T, C)."""
    x = qkv.reshape(B, T, 3, H, C // H)  # (B, T, 3C) -> q, k, v of H heads
    q, k, v = (bf16_rounded(x[:, :, i]).astype(np.float64).transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, hd)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H)
    if causal:
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, hd) -> (B, T, C)


def assert_bf16_attention(got: dict) -> None:
    """The AVX512-BF16 attention against float64: P and v in bfloat16 leave ~0.2% of the largest output."""
    assert got["has bf16"][0] == 1
    for name, causal in (("attention bf16", False), ("attention bf16 causal", True)):
        want = attention_reference(got["attention qkv"], causal)
        assert got[name].size == want.size, name
        assert np.abs(got[name].reshape(want.shape) - want).max() <= 1e-2 * np.abs(want).max(), name


def assert_built_with(objdump: str, exe: Path, instruction: str | None) -> None:
    if instruction and shutil.which(objdump):
        code = subprocess.run([objdump, "-d", str(exe)], capture_output=True, text=True, timeout=120).stdout
        assert re.search(rf"\s{instruction}\s", code), f"no {instruction} in {exe.name}"


@pytest.fixture(scope="module")
def here(tmp_path_factory) -> dict:
    """native_driver's outputs on this machine, built as fastbark builds its library (-march=native, OpenMP)."""
    return run_driver("cc", native_flags("native"), tmp_path_factory.mktemp("native"), "native")[0]


# 64-bit ARM under qemu-user, as a CPU without the byte dot product (Cortex-A72: Raspberry Pi 4, Graviton 1) and as
# one with it (qemu's "max": SDOT).
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
ARM_SYSROOT = Path("/usr/aarch64-linux-gnu")
ARM_RUNS = [("armv8-a", "cortex-a72", None), ("armv8.2-a+dotprod", "max", "sdot")]


@x86_64
@pytest.mark.parametrize("march, cpu, instruction", ARM_RUNS)
def test_the_kernels_on_emulated_arm64_compute_what_they_compute_here(march, cpu, instruction, here, tmp_path):
    if shutil.which(ARM_CC) is None or QEMU is None or not (ARM_SYSROOT / "lib").is_dir():
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    arm, exe = run_driver(ARM_CC, native_flags(march), tmp_path, march, [QEMU, "-L", str(ARM_SYSROOT), "-cpu", cpu])
    assert_computes_what_it_computes_here(arm, here)
    assert_built_with(ARM_OBJDUMP, exe, instruction)


# x86-64 CPUs this machine may lack, on Bochs (tests/x86_emulator.py), whose CPU models refuse the instructions they
# lack: AVX-512 with VNNI (Ice Lake, Tiger Lake; the float32 blocks of 16, the 512-bit int8 dot), AVX-512 with
# AVX512-BF16 and AVX-VNNI (Sapphire Rapids: the bfloat16 step and attention), AVX-VNNI without AVX-512 (Alder
# Lake and later laptops: the 256-bit VNNI dot), AVX-512 without VNNI (Skylake-SP). Built static and serial
# (tests/serial/omp.h: no threads to emulate).
X86_RUNS = [("skylake-avx512", "tigerlake", "vfmadd231ps"), ("icelake-server", "tigerlake", "vpdpbusd"),
            ("sapphirerapids", "sapphire_rapids", "vdpbf16ps"), ("alderlake", "arrow_lake", r"\{vex\} vpdpbusd")]
EMULATOR = Path(__file__).with_name("x86_emulator.py")


@pytest.fixture(scope="module")
def bochs(tmp_path_factory):
    """bochs(model, folder) -> (command, environment) that run a program on Bochs's CPU `model`, writing in
    `folder` only."""
    if importlib.util.find_spec("bochscpu") is None:
        pytest.skip("needs bochscpu-python (the test extra, on x86-64 Linux)")
    from x86_emulator import BOCHS_MODELS
    folder = tmp_path_factory.mktemp("bochs")

    def command(model: str, out_dir: Path) -> tuple[list[str], dict]:
        shim = folder / f"bochs_model_{model}.so"
        if not shim.exists():
            built = subprocess.run(["cc", "-shared", "-fPIC", "-O2", f"-DMODEL={BOCHS_MODELS[model]}",
                                    str(Path(__file__).with_name("bochs_model.c")), "-o", str(shim), "-ldl"],
                                   capture_output=True, text=True, timeout=120)
            assert built.returncode == 0, built.stderr
        return [sys.executable, str(EMULATOR), str(out_dir)], {**os.environ, "LD_PRELOAD": str(shim)}
    return command


def emulated_flags(march: str) -> list[str]:
    return ["-O3", f"-march={march}", "-static", "-I", str(Path(__file__).with_name("serial"))]


@x86_64
@pytest.mark.parametrize("march, model, instruction", X86_RUNS)
def test_the_kernels_on_emulated_x86_compute_what_they_compute_here(march, model, instruction, bochs, here,
                                                                   tmp_path):
    emulate, env = bochs(model, tmp_path)
    got, exe = run_driver("cc", emulated_flags(march), tmp_path, march, emulate, env)
    assert_computes_what_it_computes_here(got, here)
    assert_built_with("objdump", exe, instruction)
    if march == "sapphirerapids":
        assert_bf16_attention(got)
    else:
        assert got["has bf16"][0] == 0 and got["attention bf16"].size == 0


@x86_64
def test_the_emulated_cpus_refuse_what_they_lack(bochs, tmp_path):
    """The emulator is a fair stand-in only if a model lacking an instruction set refuses it, as that CPU would:
    an AVX512-BF16 build on Tiger Lake, an AVX-512 build on Arrow Lake (exit 132, as for SIGILL)."""
    for march, model in (("sapphirerapids", "tigerlake"), ("icelake-server", "arrow_lake")):
        emulate, env = bochs(model, tmp_path)
        exe = build_driver("cc", emulated_flags(march), tmp_path, march)
        ran = subprocess.run([*emulate, str(exe), str(tmp_path / "out.bin")], capture_output=True, text=True,
                             timeout=300, env=env)
        assert ran.returncode == 132 and "CPU exception 6" in ran.stderr, (march, model, ran.returncode, ran.stderr)


@x86_64
@pytest.mark.parametrize("march, model, position", [("icelake-server", "tigerlake", 1), ("icelake-server", "tigerlake", -1),
                                                     ("alderlake", "arrow_lake", -1)])
def test_the_tuning_candidates_keep_the_bits_on_emulated_cpus(march, model, position, bochs, tmp_path):
    """The build-time knobs (tuning.py) change speed only: on AVX-512 with VNNI and on AVX-VNNI, the build with every
    knob at another value gives every output, float ones included, the bits of the build with the headers' defaults
    (at first use a candidate that did not would be refused)."""
    emulate, env = bochs(model, tmp_path)
    reference, _ = run_driver("cc", emulated_flags(march), tmp_path, "defaults", emulate, env)
    defines = defines_of({knob.name: knob.values[position] for knob in KNOBS})
    got, _ = run_driver("cc", [*emulated_flags(march), *(f"-D{k}={v}" for k, v in defines.items())],
                        tmp_path, "tuned", emulate, env)
    assert got.keys() == reference.keys()
    for name, want in reference.items():
        assert np.array_equal(got[name].view(np.uint32), want.view(np.uint32)), (name, defines)
