import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # the CUDA backend's Triton kernels run on CPU tensors in Triton's interpreter (tests/test_fused_step.py).
    # Triton reads this when a kernel is decorated, its own library's included: before any module imports
    # Triton (some test modules' imports do, through transformers or torch), so here, first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # fidelity.measure for the bounds
from fastbark.testing import VOICES, random_voice, reference_model, write_hub_dir, write_suno_files  # noqa: E402

import fastbark  # noqa: E402


@pytest.fixture(scope="session")
def reference():
    """transformers' BarkModel with tiny random weights: the reference implementation."""
    return reference_model(seed=0)


@pytest.fixture(scope="session")
def voice_arrays():
    rng = np.random.default_rng(0)
    return {name: random_voice(rng) for name in VOICES}


@pytest.fixture(scope="session")
def hub_dir(reference, voice_arrays, tmp_path_factory):
    return write_hub_dir(reference, tmp_path_factory.mktemp("hub") / "bark-tiny", voice_arrays)


@pytest.fixture(scope="session")
def suno_dir(reference, tmp_path_factory):
    return write_suno_files(reference, tmp_path_factory.mktemp("suno") / "bark-original")


@pytest.fixture(scope="session")
def tts(hub_dir):
    return fastbark.Bark.from_pretrained(hub_dir)


@pytest.fixture(scope="session")
def plain_tts(hub_dir):
    """Plain (unpacked) CPU weights: every weight shows in state_dict()."""
    return fastbark.Bark.from_pretrained(hub_dir, cpu_kernel="plain")
