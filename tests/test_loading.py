"""Every checkpoint layout users hold loads to the same model; bad checkpoints fail clearly."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import fastbark
from fastbark import CheckpointError
from fastbark.loading.convert import write_hub_layout
from fastbark.loading.layouts import load_parts

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CPU = torch.device("cpu")


def same_weights(a: fastbark.Bark, b: fastbark.Bark):
    """Every weight equal (engines loaded with cpu_kernel="plain", so that state_dict shows them all)."""
    for name in ("semantic_model", "coarse_model", "fine_model", "codec"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=1e-6, rtol=1e-6, msg=f"{name}.{key}")


def same_outputs(a: fastbark.Bark, b: fastbark.Bark):
    kwargs = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, max_semantic_tokens=30)
    x, y = a.generate("the dog is cute", **kwargs), b.generate("the dog is cute", **kwargs)
    np.testing.assert_array_equal(x.fine_tokens, y.fine_tokens)
    np.testing.assert_allclose(x.audio, y.audio, atol=1e-5)


def test_suno_pt_and_original_encodec_load_the_same_model(plain_tts, suno_dir, hub_dir):
    tts = plain_tts
    suno = fastbark.Bark.from_pretrained(suno_dir, tokenizer=hub_dir / "vocab.txt", cpu_kernel="plain")
    same_weights(tts, suno)
    same_outputs(tts, suno)
    assert all(h.weight is e.weight for h, e in zip(suno.fine_model.lm_heads, suno.fine_model.input_embeds_layers[1:]))


def test_old_vocab_size_and_hub_layout_encodec(reference, hub_dir, tmp_path, plain_tts):
    from fastbark.testing import write_suno_files
    folder = write_suno_files(reference, tmp_path / "old", old_vocab_size=True)
    (folder / "encodec_24khz-d7cc33bc.th").unlink()
    reference.codec_model.save_pretrained(tmp_path / "encodec_24khz")  # the facebook/encodec_24khz layout
    shutil.copy(hub_dir / "vocab.txt", folder / "vocab.txt")
    old = fastbark.Bark.from_pretrained(folder, codec=tmp_path / "encodec_24khz", cpu_kernel="plain")
    assert old.coarse_model.config.input_vocab_size == 12_096
    same_weights(plain_tts, old)


def test_tied_fine_heads_are_shared(tts):
    fine = tts.fine_model
    assert all(h.weight is e.weight for h, e in zip(fine.lm_heads, fine.input_embeds_layers[1:]))


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                                (torch.float32, torch.float32)])
def test_dtype_cast_at_load(hub_dir, dtype, torch_dtype):
    tts = fastbark.Bark.from_pretrained(hub_dir, dtype=dtype)
    assert tts.semantic_model.position_embeds_layer.weight.dtype == torch_dtype
    assert tts.fine_model.layers[0].mlp.in_proj.weight.dtype == torch_dtype
    assert tts.codec.decoder.layers[0].conv.weight.dtype == torch.float32  # the codec stays float32
    if torch_dtype != torch.float16:  # half precision matmuls are slow on CPU; bf16 is the CPU fast path
        out = tts.generate("hello", seed=0, max_semantic_tokens=10)
        assert np.isfinite(out.audio).all()


def test_unknown_dtype_and_device(hub_dir):
    with pytest.raises(fastbark.BadInput, match="dtype 'int8' is unknown.*float32, float16, bfloat16"):
        fastbark.Bark.from_pretrained(hub_dir, dtype="int8")
    with pytest.raises(fastbark.BadInput, match="device .* is unknown"):
        fastbark.Bark.from_pretrained(hub_dir, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(fastbark.BadInput, match="CUDA is not available"):
            fastbark.Bark.from_pretrained(hub_dir, device="cuda")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no Bark checkpoint"):
        fastbark.Bark.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="neither a local folder nor a hub id"):
        fastbark.Bark.from_pretrained(str(tmp_path / "nope" / "deeper" / "x"))


def test_partial_checkpoint_names_missing_keys(hub_dir, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(hub_dir, copy)
    state = load_file(copy / "model.safetensors")
    del state["coarse_acoustics.layers.1.mlp.in_proj.weight"]
    save_file(state, copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"coarse model weights are incomplete: missing layers\.1\.mlp\.in_proj"):
        fastbark.Bark.from_pretrained(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        fastbark.Bark.from_pretrained(copy)


def test_config_that_does_not_match_the_weights(hub_dir, tmp_path):
    copy = tmp_path / "mismatch"
    shutil.copytree(hub_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["semantic_config"]["num_layers"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="semantic model weights do not match its config: unexpected layers.1"):
        fastbark.Bark.from_pretrained(copy)


def test_pickled_code_is_refused(suno_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(suno_dir, bad)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model_args": {}, "model": {}, "payload": Exploit()}, bad / "text.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        fastbark.Bark.from_pretrained(bad)


class FakeHub:
    """hf_hub_download's stand-in: serves a folder as a hub repo and records every file asked for."""

    def __init__(self, folder):
        self.folder, self.asked = folder, []

    def __call__(self, repo_id, filename, revision=None, cache_dir=None, local_files_only=False):
        from huggingface_hub.errors import EntryNotFoundError
        self.asked.append(filename)
        if not (self.folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(self.folder / filename)


def test_hub_downloads_only_what_is_needed(hub_dir, suno_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(hub_dir, repo)
    for f in suno_dir.iterdir():  # the hub repos also carry Suno's multi-GB files
        shutil.copy(f, repo / f.name)
    hub = FakeHub(repo)
    parts = load_parts("suno/bark-tiny", CPU, torch.float32, download=hub)
    assert not [f for f in hub.asked if f.endswith((".pt", ".th", ".npy"))]
    assert "model.safetensors" in hub.asked and "config.json" in hub.asked
    tts = fastbark.Bark(parts, fastbark.EngineOptions())
    assert tts.voices() == ["announcer", "v2/en_speaker_1"]
    tts.load_voice("announcer")
    assert sorted(f for f in hub.asked if f.endswith(".npy")) == [
        f"speaker_embeddings/announcer_{k}.npy" for k in ("coarse_prompt", "fine_prompt", "semantic_prompt")]


def test_hub_id_offline_and_not_cached(tmp_path):
    with pytest.raises(CheckpointError, match="cannot download 'suno/bark-small'.*not in"):
        fastbark.Bark.from_pretrained("suno/bark-small", cache_dir=tmp_path, local_files_only=True)


def test_hub_id_from_the_usual_cache(hub_dir, tmp_path, plain_tts):
    snapshot = tmp_path / "models--suno--bark-tiny" / "snapshots" / "0123abcd"
    shutil.copytree(hub_dir, snapshot)
    (tmp_path / "models--suno--bark-tiny" / "refs").mkdir()
    (tmp_path / "models--suno--bark-tiny" / "refs" / "main").write_text("0123abcd")
    cached = fastbark.Bark.from_pretrained("suno/bark-tiny", cache_dir=tmp_path, local_files_only=True,
                                           cpu_kernel="plain")
    same_weights(plain_tts, cached)
    assert cached.load_voice("announcer") is not None


@pytest.mark.parametrize("source", ["hub", "suno"])
def test_convert_round_trip(source, hub_dir, suno_dir, tmp_path, plain_tts):
    src = hub_dir if source == "hub" else suno_dir
    parts = load_parts(src, CPU, torch.float32, tokenizer=hub_dir / "vocab.txt" if source == "suno" else None)
    write_hub_layout(parts, tmp_path / "out")
    converted = fastbark.Bark.from_pretrained(tmp_path / "out", cpu_kernel="plain")
    same_weights(plain_tts, converted)
    same_outputs(plain_tts, converted)
    assert converted.tokenize("café naïve ♪") == plain_tts.tokenize("café naïve ♪")


def test_convert_float16_loads_in_transformers(hub_dir, tmp_path, reference):
    from transformers import BarkModel
    from fastbark.cli import main
    assert main(["convert", str(hub_dir), str(tmp_path / "half"), "--dtype", "float16"]) == 0
    state = load_file(tmp_path / "half" / "model.safetensors")
    assert state["semantic.lm_head.weight"].dtype == torch.float16
    assert state["codec_model.decoder.layers.0.conv.parametrizations.weight.original1"].dtype == torch.float32
    theirs = BarkModel.from_pretrained(tmp_path / "half", dtype=torch.float32)
    codes = torch.randint(0, 1024, (1, 8, 20))
    torch.testing.assert_close(theirs.codec_decode(codes), reference.codec_decode(codes), atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs.fine_acoustics.lm_heads[0].weight,
                               reference.fine_acoustics.lm_heads[0].weight.half().float())
    assert main(["convert", str(hub_dir), str(tmp_path / "half")]) == 2  # refuses to overwrite


@pytest.mark.parametrize("kernel, layer", [("c", "GemvLinear"), ("onednn", "PackedLinear")])
def test_cpu_kernels_give_the_plain_tokens(hub_dir, plain_tts, kernel, layer):
    if kernel == "c" and shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    tts = fastbark.Bark.from_pretrained(hub_dir, cpu_kernel=kernel)
    assert type(tts.semantic_model.lm_head).__name__ == layer
    assert type(tts.coarse_model.layers[0].mlp.in_proj).__name__ == layer
    kwargs = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None)
    a, b = tts.generate("the dog is cute", **kwargs), plain_tts.generate("the dog is cute", **kwargs)
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.fine_tokens, b.fine_tokens)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-4)


def test_bad_cpu_kernel(hub_dir):
    with pytest.raises(fastbark.BadInput, match="cpu_kernel 'fast' is unknown; accepted: auto, c, onednn, plain"):
        fastbark.Bark.from_pretrained(hub_dir, cpu_kernel="fast")


@pytest.mark.parametrize("which", ["write_random_checkpoint", "the test fixture"])
def test_test_checkpoints_decode_different_codes_to_different_audio(which, hub_dir, tmp_path):
    """Audio compared byte for byte proves something only if it depends on the tokens: with EnCodec's
    codebooks left at zero (transformers' init), every code decodes to the same audio. Fails before issue 23
    for write_random_checkpoint (the load benchmark's checkpoints)."""
    from fastbark.testing import write_random_checkpoint
    folder = write_random_checkpoint("tiny", tmp_path / "bark") if which == "write_random_checkpoint" else hub_dir
    tts = fastbark.Bark.from_pretrained(folder)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 1024, (8, 20)), rng.integers(0, 1024, (8, 20))
    audio_a, audio_b = tts.decode(a), tts.decode(b)
    assert np.abs(audio_a - audio_b).max() > 1e-3
    b[:, :10] = a[:, :10]  # the same first half, another second half: the second half of the audio differs
    assert np.abs(tts.decode(b)[-2000:] - audio_a[-2000:]).max() > 1e-3
