"""The benchmark runs end to end at tiny sizes, so it cannot rot. Its timings are never asserted."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.filterwarnings("ignore")
def test_benchmark_smoke(tmp_path):
    import bench
    engines = {"fastbark", "fastbark-int8", "transformers", "transformers-int8"}
    results = bench.main(["--size", "tiny", "--semantic-tokens", "12", "--engines", ",".join(sorted(engines)),
                          "--json", str(tmp_path / "out.json")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["engines"].keys() == engines
    for row in results["engines"].values():
        assert row["n_semantic"] == 12  # every engine did the same forced work
        assert row["audio_s"] > 0 and row["total_s"] > 0
    assert results["engines"]["fastbark"]["n_coarse"] == results["engines"]["transformers"]["n_coarse"]


@pytest.mark.filterwarnings("ignore")
def test_benchmark_with_a_voice_gives_every_engine_the_same_work(tmp_path):
    import bench
    results = bench.main(["--size", "tiny", "--semantic-tokens", "12", "--engines", "fastbark,transformers",
                          "--voice", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["voice"] is True
    rows = results["engines"]
    assert rows["fastbark"]["n_coarse"] == rows["transformers"]["n_coarse"] > 0  # the voice shapes the work alike


@pytest.mark.filterwarnings("ignore")
@pytest.mark.skipif(importlib.util.find_spec("bark") is None,
                    reason="Suno's original code (pip install bark) is optional")
def test_benchmark_suno_engine_smoke():
    import bench
    results = bench.main(["--size", "tiny", "--semantic-tokens", "12", "--engines", "suno,fastbark"])
    assert results["engines"]["suno"]["n_semantic"] == 12


def test_attention_benchmark_smoke():
    import attention
    results = attention.main(["--repeats", "1"])
    for row in results.values():
        assert row["max_abs_diff"] < 1e-4  # eager and SDPA compute the same attention


@pytest.mark.filterwarnings("ignore")
def test_linear_bandwidth_smoke(tmp_path):
    import linear_bandwidth
    results = linear_bandwidth.main(["--json", str(tmp_path / "out.json")])
    assert {"F.linear float32", "oneDNN packed float32", "fastbark int8, torch._int_mm"} <= results.keys()
    assert all(ms > 0 for ms in results.values())
    rows = linear_bandwidth.main(["--rows", "3"])  # a batch of decodes: every kernel still runs
    assert rows.keys() == results.keys()


@pytest.mark.filterwarnings("ignore")
def test_tuning_benchmark_smoke(tmp_path):
    import shutil
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    import tuning
    result = tuning.main(["--runs", "1", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["runs"][0]["choices"].keys() == \
        {"int8 prefetch", "float32 prefetch", "float32 blocks", "float32 chunk", "int4 prefetch", "bfloat16 prefetch"} \
        == result["runs"][0]["choices"].keys()


@pytest.mark.filterwarnings("ignore")
def test_longform_benchmark_smoke(tmp_path):
    import longform
    results = longform.main(["--size", "tiny", "--chunk-tokens", "4", "--engines", "fastbark,fastbark-loop",
                             "--json", str(tmp_path / "out.json")])
    rows = json.loads((tmp_path / "out.json").read_text())["engines"]
    assert rows.keys() == {"fastbark", "fastbark-loop"} and rows["fastbark"]["chunks"] > 5
    assert rows["fastbark"]["audio_s"] == pytest.approx(results["engines"]["fastbark"]["audio_s"])
    assert all(0 < r["ttfa_s"] <= r["total_s"] for r in rows.values())


@pytest.mark.filterwarnings("ignore")
def test_load_benchmark_smoke(tmp_path):
    pytest.importorskip("fastapi")
    import load
    results = load.main(["--size", "tiny", "--clients", "2", "--requests", "1", "--tokens", "4",
                         "--json", str(tmp_path / "out.json")])
    for row in results["runs"].values():
        assert row["errors"] == 0 and row["identical_to_alone"] == 2  # every response equals its alone generation
    assert json.loads((tmp_path / "out.json").read_text())["throughput_ratio"] > 0


@pytest.mark.filterwarnings("ignore")
def test_fine_rows_benchmark_smoke(tmp_path):
    import fine_rows
    results = fine_rows.main(["--size", "tiny", "--texts", "3", "--frames", "20", "--json", str(tmp_path / "out.json")])
    assert results["equal"] and set(results["runs"]) == {"3 per pass", "1 per pass"}
    assert json.loads((tmp_path / "out.json").read_text())["equal"]


@pytest.mark.filterwarnings("ignore")
def test_load_benchmark_with_the_server_as_reference(tmp_path):
    pytest.importorskip("fastapi")
    import load
    results = load.main(["--size", "tiny", "--clients", "2", "--requests", "1", "--tokens", "4", "--alone", "server"])
    assert results["runs"]["batched"]["identical_to_alone"] == 2 and results["runs"]["batched"]["errors"] == 0


@pytest.mark.filterwarnings("ignore")
def test_gpu_device_script_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu.py is the one command a lent GPU runs; its CPU run proves it works before that."""
    import gpu
    results = gpu.main(["--device", "cpu", "--sizes", "tiny", "--tokens", "8", "--batches", "1,2",
                        "--out", str(tmp_path)])
    every_stage = {"semantic": True, "coarse": True, "fine": True}
    parity = results["parity_fp32_device_vs_cpu"]
    assert parity["cpu"] == every_stage and parity["torch"] == every_stage and "backend cpu" in parity["cpu report"]
    assert results["errors"] == [] and results["skipped"] == []
    assert "backend cpu" in results["doctor"]
    assert results["invariance"]["tiny"]["equal_texts"] == 5
    for config in ("auto", "torch"):  # on the CPU every run repeats the last bit for bit
        assert results["repeats"][config]["same_per_stage"] == dict.fromkeys(
            ("semantic_tokens", "coarse_tokens", "fine_tokens", "audio"), 5)
        assert results["repeats"][config]["first_difference"] is None
    assert set(results["invariance"]["tiny"]["repeat_equal_per_stage"].values()) == {5}
    floor = results["floor"]["tiny"]
    assert all(floor[f"{b} batch {n} step ms"] > 0 for b in ("auto", "torch") for n in (1, 2))
    rows = results["speed"]["tiny"]
    assert {(r["engine"], r["batch"]) for r in rows} == \
        {(e, b) for e in ("fastbark", "transformers") for b in (1, 2)} | {("fastbark+voice", 1), ("transformers+voice", 1)}
    assert all(r["total_s"] > 0 and r["audio_s"] > 0 for r in rows)
    by = {(r["engine"], r["batch"]): r for r in rows}
    assert by[("fastbark", 2)]["coarse_tokens"] == by[("transformers", 2)]["coarse_tokens"]  # the same forced work
    assert by[("fastbark+voice", 1)]["coarse_tokens"] == by[("transformers+voice", 1)]["coarse_tokens"]
    for b in (1, 2):  # the decode stages through the pipeline: wall time per token and the host's ops
        profiled = results["stage_profile"][f"batch {b}"]
        assert profiled["semantic"]["steps"] == 64 and profiled["coarse"]["steps"] == 192
        for stage in ("semantic", "coarse"):
            assert profiled[stage]["wall_ms_per_step"] > 0 and profiled[stage]["top_host_ops"]
            assert profiled[stage]["device_busy_ms_per_step"] is None  # the CPU launches no device kernels
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["floor"]["tiny"]["weight_mb"] > 0 and "| tiny | fastbark |" in (tmp_path / "gpu.md").read_text()


def test_gpu_device_script_runs_the_most_wanted_first_and_keeps_to_its_budget(tmp_path):
    """On a GPU the script's order is each size's steps, whole runs against transformers and offload first,
    then the first size's agreement, repeats and compiled step; past --budget-s it starts nothing new and
    lists what it skipped."""
    import gpu
    engines = ["fastbark", "fastbark-torch", "transformers", "fastbark-offload", "fastbark-compile"]
    tasks = gpu.plan(torch.device("cuda"), ["small", "large"], [1, 16], engines)
    assert tasks[:4] == [("doctor", None, None), ("floor", "small", None), ("fused", "small", None),
                         ("step", "small", ("auto", False, 1))]
    assert tasks.index(("speed", "small", ("transformers", 16))) < tasks.index(("floor", "large", None))
    assert tasks.index(("speed", "large", ("transformers", 16))) < tasks.index(("repeats", "small", None))
    assert tasks.index(("speed", "large", ("fastbark-offload", 1))) < tasks.index(("agreement", "small", None))
    assert tasks.index(("agreement", "small", None)) < tasks.index(("step", "small", ("auto", True, 1)))
    assert tasks.index(("invariance", "small", None)) < tasks.index(("codec", "small", None)) < \
        tasks.index(("stage-profile", "small", 16)) < tasks.index(("stage-profile", "small", 1)) < \
        tasks.index(("floor", "large", None))
    assert tasks.index(("speed", "large", ("fastbark", 1))) < tasks.index(("speed", "large", ("fastbark-torch", 1)))
    assert tasks.index(("speed", "small", ("fastbark-offload", 1))) < \
        tasks.index(("speed", "small", ("transformers+voice", 1))) < tasks.index(("floor", "large", None))
    assert len(set(tasks)) == len(tasks) and ("speed", "large", ("fastbark-compile", 16)) in tasks
    results = gpu.main(["--device", "cpu", "--sizes", "tiny", "--tokens", "4", "--batches", "1",
                        "--budget-s", "0", "--out", str(tmp_path)])
    assert results["parity_fp32_device_vs_cpu"]["cpu"]["fine"] and results["speed"] == {}
    assert results["skipped"][0] == "doctor" and results["skipped"][-1] == "clone"


def test_split_hostile_smoke():
    import split_hostile
    rows = split_hostile.main(["--bytes", "20000"])["rows"]
    assert all(r["chunks"] > 0 for r in rows.values())


@pytest.mark.filterwarnings("ignore")
def test_first_chunk_and_wyoming_load_smoke(tmp_path):
    import first_chunk
    import wyoming_load
    result = first_chunk.main(["--size", "tiny", "--repeats", "1", "--json", str(tmp_path / "fc.json")])
    off, on = result["rows"]
    assert on["first_chunk_chars"] < off["first_chunk_chars"] and on["semantic_tokens"] < off["semantic_tokens"]
    load = wyoming_load.main(["--size", "tiny", "--clients", "3", "--tokens", "4", "--json", str(tmp_path / "w.json")])
    assert load["ok"] == 3 and not load["errors"] and load["first_audio_max_s"] > 0


def test_decoders_smoke(tmp_path):
    import decoders
    result = decoders.main(["--seconds", "1", "--repeats", "1", "--json", str(tmp_path / "d.json")])
    assert [r["decoder"] for r in result["rows"]] == ["encodec", "vocos"]
    assert all(r["audio_s"] == 1.0 and r["decode_s"] > 0 for r in result["rows"])  # 75 frames -> 24,000 samples


@pytest.mark.filterwarnings("ignore")
def test_verify_cost_smoke(tmp_path):
    import verify_cost
    result = verify_cost.main(["--seconds", "1", "--tokens", "4", "--repeats", "1", "--width", "32", "--layers", "1",
                               "--json", str(tmp_path / "v.json")])
    assert [r["verify"] for r in result["rows"]] == ["duration", "asr"] and result["rows"][1]["check_s"] > 0


def test_clone_benchmark_smoke(tmp_path):
    import clone
    result = clone.main(["--seconds", "1", "--repeats", "1", "--no-reference", "--json", str(tmp_path / "c.json")])
    assert len(result["rows"]) == 4 and all(r["seconds"] > 0 for r in result["rows"])


def test_compute_rates_smoke(tmp_path):
    import compute_rates
    result = compute_rates.main(["--size", "tiny", "--modes", "float32,int8", "--repeats", "1",
                                 "--json", str(tmp_path / "r.json")])
    assert [r["mode"] for r in result["rows"]] == ["float32", "int8"]
    assert all(r["gemm_gflops"] > 0 and r["fine_gflops"] > 0 and r["prefill_s"] > 0 for r in result["rows"])


def test_routes_ab_smoke(tmp_path):
    import routes_ab
    result = routes_ab.main(["--size", "tiny", "--modes", "int8,bfloat16", "--rounds", "1",
                             "--json", str(tmp_path / "a.json")])
    assert {(r["mode"], r["pass"], r["undone"]) for r in result["rows"]} >= {
        ("int8", "prefill", "prefills"), ("int8", "fine pass", "gelu"), ("bfloat16", "prefill", "gelu")}
    assert all(r["before_s"] > 0 and r["chosen_s"] > 0 for r in result["rows"])


def test_kernels_ab_smoke(tmp_path):
    """The AMX kernels of the last commit against this tree's; on a CPU without AMX, no rows."""
    import kernels_ab
    from fastbark.backends.cpu.amx import amx_kernels
    result = kernels_ab.main(["--size", "tiny", "--modes", "int8", "--rounds", "1", "--base", "HEAD",
                              "--json", str(tmp_path / "k.json")])
    if amx_kernels() is None:
        assert result["rows"] == []
        return
    assert [(r["mode"], r["pass"]) for r in result["rows"]] == [("int8", "prefill"), ("int8", "fine pass")]
    assert all(r["base_best_s"] > 0 and r["now_median_s"] > 0 for r in result["rows"])


def test_kv_cache_benchmark_smoke(tmp_path):
    import kv_cache
    result = kv_cache.main(["--size", "tiny", "--semantic-tokens", "8", "--rounds", "1", "--caches", "int8,float32",
                            "--json", str(tmp_path / "k.json")])
    assert [r["cache"] for r in result["rows"]] == ["int8", "float32"]
    assert all(r["semantic_min"] > 0 and r["coarse_min"] > 0 for r in result["rows"])
