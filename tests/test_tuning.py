"""The C kernels' build-time parameters chosen by timing (backends/cpu/tuning.py)."""

import time

import pytest
import torch

import fastbark
from fastbark.backends.cpu.library import load_kernels
from fastbark.backends.cpu.tuning import KNOBS, TUNING_LABEL, choose_value, defines_of


def products(delay_s: float = 0.0, offset: float = 0.0):
    """f(M): a stand-in for a build's products: M rows, a fixed result, optionally slow or with other bits."""
    def run(m):
        if delay_s:
            time.sleep(delay_s)
        return [torch.arange(m * 3, dtype=torch.float32) + offset]
    return run


def test_the_fastest_build_that_keeps_the_bits_is_chosen():
    runs = {"first": products(0.002), "slow": products(0.02), "fast": products(), "wrong": products(offset=1e-3)}
    choice = choose_value("a knob", runs, (1, 8), rounds=1, refused={"broken": "it did not build"})
    assert choice.chosen == "fast"
    assert choice.refused == {"broken": "it did not build", "wrong": "other bits than the first build"}
    assert set(choice.ms) == {"first", "slow", "fast"} and choice.ms["slow"] > choice.ms["fast"]
    assert str(choice).startswith(f"{TUNING_LABEL}a knob: fast (fast ")
    with pytest.raises(RuntimeError, match="no build"):
        choose_value("a knob", {}, (1,), refused={"x": "it did not build"})


def test_each_knob_sets_its_own_defines():
    assert defines_of({}) == {"FASTBARK_S8_PREFETCH": "2048", "FASTBARK_F32_PREFETCH": "0", "FASTBARK_BN": "1",
                              "FASTBARK_BM": "4", "FASTBARK_F32_CHUNK": "131072", "FASTBARK_Q4_PREFETCH": "0",
                              "FASTBARK_BF16_PREFETCH": "2048"}
    assert defines_of({"float32 blocks": "2x2", "int8 prefetch": "0"})["FASTBARK_BN"] == "2"
    assert defines_of({"int8 prefetch": "0"})["FASTBARK_S8_PREFETCH"] == "0"


def test_every_candidate_build_gives_the_same_bits_and_the_report_says_what_was_chosen(hub_dir):
    """On this machine: every prefetch distance and block shape built, none refused (their outputs are the first
    build's, bit for bit, at 1, 4, 8 and 16 rows), and the engine's report lists the choices."""
    kernels = load_kernels()
    if kernels is None:
        pytest.skip("no C kernels here")
    assert [c.label for c in kernels.tuning] == [TUNING_LABEL + k.name for k in KNOBS]
    for choice, knob in zip(kernels.tuning, KNOBS):
        assert choice.refused == {} and set(choice.ms) == set(knob.values), choice
        assert choice.chosen == min(choice.ms, key=choice.ms.get)
    report = str(fastbark.Bark.from_pretrained(hub_dir).backend)
    assert all(f"{TUNING_LABEL}{k.name}: " in report for k in KNOBS), report


def test_the_cli_announces_the_first_use_on_a_cpu_once(hub_dir, tmp_path):
    """A fresh cache: `fastbark say` says, before the wait, that it builds and measures the kernels; the second run,
    with everything cached, does not."""
    import os
    import shutil
    import subprocess
    import sys
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "fastbark", "say", "hi", "--model", str(hub_dir), "-o", str(tmp_path / "a.wav"),
               "--max-semantic-tokens", "8"]
    runs = [subprocess.run(command, capture_output=True, text=True, timeout=600, env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert [r.stderr.count("first use on this CPU") for r in runs] == [1, 0]


def test_processes_started_together_tune_once(tmp_path):
    """Two processes loading the kernels at once, on a fresh cache: one builds and measures, the other waits and reads
    what it measured (the same choices, to the last digit of their times)."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    code = ("import json; from fastbark.backends.cpu.library import load_kernels; k = load_kernels(); "
            "print(json.dumps([str(c) for c in k.tuning]))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs[0][1][-2000:]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert len(first) == len(KNOBS) and first == second
