"""The benchmark runs end to end at tiny sizes, so it cannot rot. Its timings are never asserted."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.filterwarnings("ignore")
def test_benchmark_smoke(tmp_path):
    import bench
    results = bench.main(["--size", "tiny", "--semantic-tokens", "12",
                          "--json", str(tmp_path / "out.json")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["engines"].keys() == {"fastbark", "transformers"}
    for row in results["engines"].values():
        assert row["n_semantic"] == 12  # every engine did the same forced work
        assert row["audio_s"] > 0 and row["total_s"] > 0
    assert results["engines"]["fastbark"]["n_coarse"] == results["engines"]["transformers"]["n_coarse"]


@pytest.mark.filterwarnings("ignore")
def test_linear_bandwidth_smoke(tmp_path):
    import linear_bandwidth
    results = linear_bandwidth.main(["--json", str(tmp_path / "out.json")])
    assert {"F.linear float32", "oneDNN packed float32"} <= results.keys()
    assert all(ms > 0 for ms in results.values())
