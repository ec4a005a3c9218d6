"""CPU offload (backends/cuda/offload.py): each GPT on the device for its stage only, the next prefetched.
On the CPU the moves change nothing, so a spy records their order; a GPU run measures the memory."""

import numpy as np
import pytest
import torch

import fastbark
from fastbark import BadInput, EngineOptions
from fastbark.backends.cuda.offload import Offload
from fastbark.cli import main
from fastbark.loading.layouts import load_parts


class Spy(Offload):
    def __init__(self, models, device):
        self.calls, self.most = [], 0
        super().__init__(models, device)

    def move(self, name, where):
        super().move(name, where)
        self.calls.append((name, where))
        self.most = max(self.most, len(self.on_device()))


def test_offload_needs_cuda_and_a_boolean(capsys):
    with pytest.raises(BadInput, match="offload keeps the models in CPU memory for a GPU: it needs device cuda"):
        EngineOptions(offload=True)
    with pytest.raises(BadInput, match="offload must be true or false"):
        EngineOptions(offload="yes")
    assert main(["say", "hi", "--offload", "-o", "x.wav"]) == 2
    assert capsys.readouterr().err.startswith("fastbark: error: --offload keeps the models")


def test_each_stage_runs_with_its_model_on_the_device_and_the_next_one_arriving(hub_dir):
    parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
    spy = Spy({"semantic": parts.semantic, "coarse": parts.coarse, "fine": parts.fine}, "cpu")
    tts = fastbark.Bark(parts, EngineOptions(backend="torch"), offload=spy)
    seen = []

    def progress(p):
        if p.stage in ("semantic", "coarse", "fine") and p.done == 0:
            assert p.stage in spy.on_device(), (p.stage, spy.on_device())  # its model is there when it starts
            seen.append(p.stage)
    spy.calls.clear()
    outs = tts.generate(["the dog", "hello world"], voice=[None, "announcer"], seed=1, max_semantic_tokens=5,
                        progress=progress)
    assert seen == ["semantic", "coarse", "fine", "coarse", "fine"]  # two voices: coarse and fine per voice
    assert spy.calls == [
        ("semantic", "device"), ("coarse", "device"), ("semantic", "cpu"),  # semantic runs, coarse arrives
        ("fine", "device"), ("coarse", "cpu"), ("fine", "cpu"),  # coarse runs, fine arrives; fine runs
        ("coarse", "device"), ("fine", "device"), ("coarse", "cpu"), ("fine", "cpu"),  # the second voice
    ]
    assert spy.most == 2 and spy.on_device() == []  # never more than two GPTs on the device; none after
    plain = fastbark.Bark.from_pretrained(hub_dir, backend="torch")
    for got, want in zip(outs, plain.generate(["the dog", "hello world"], voice=[None, "announcer"], seed=1,
                                              max_semantic_tokens=5)):
        np.testing.assert_array_equal(got.audio, want.audio)  # offload changes where, not what


def test_stage_methods_offload_too(hub_dir):
    parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
    spy = Spy({"semantic": parts.semantic, "coarse": parts.coarse, "fine": parts.fine}, "cpu")
    tts = fastbark.Bark(parts, EngineOptions(backend="torch"), offload=spy)
    spy.calls.clear()
    semantic = tts.text_to_semantic("the dog", seed=2, max_tokens=5)
    assert spy.calls[:3] == [("semantic", "device"), ("coarse", "device"), ("semantic", "cpu")]
    tts.coarse_to_fine(tts.semantic_to_coarse(semantic, seed=2), seed=2)
    assert spy.on_device() == []


def test_a_model_leaving_the_device_takes_its_kept_caches_with_it(hub_dir):
    """The CUDA backend keeps each decoder's static caches for reuse (16 rows x 1024 positions: 0.6 GB for
    bark-small in half precision). With offload they go when their model leaves the device, so the stage
    after holds neither; without offload they stay, for the next generation."""
    from fastbark.backends.cuda import CudaBackend
    for offload in (True, False):
        parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
        options = EngineOptions()
        spy = Spy({"semantic": parts.semantic, "coarse": parts.coarse, "fine": parts.fine}, "cpu") if offload else None
        tts = fastbark.Bark(parts, options, backend=CudaBackend(options, graphs=False), offload=spy)
        kept = {}

        def progress(p):
            if p.stage in ("coarse", "fine") and p.done == 0:
                kept[p.stage] = len(tts.semantic_model.decoder._slabs)
        tts.generate("the dog", seed=1, max_semantic_tokens=8, progress=progress)
        assert kept == ({"coarse": 0, "fine": 0} if offload else {"coarse": 1, "fine": 1})
        assert len(tts.coarse_model.decoder._slabs) == (0 if offload else 1)
