"""Voices from recordings (clone/, models/hubert.py, loading/hubert.py): HuBERT's block-9 features equal to
transformers' HubertModel from every layout (fairseq's pickled .pt read without running its objects); a
synthetic clip made into a voice with the right shapes, that saves, loads and speaks; the CLI, the server's
upload and every kind of bad input. The quantizer's parity is in test_clone_quantizer.py, the encoder's in
test_encodec_encoder.py."""

import argparse
import json
import math
import subprocess
import sys
import time
import warnings

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

import fastbark
from fastbark import BadInput, CheckpointError
from fastbark.clone.audio import MAX_CLIP_SECONDS, read_clip
from fastbark.clone.quantizer import quantizer_file
from fastbark.loading.hubert import load_hubert
from fastbark.testing import TINY_HUBERT, write_clone_models
from fastbark.voices import Voice

RATE = 44_100


def sweep(seconds: float, rate: int = RATE, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A rising tone with a little noise: (T,) float32."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (level * np.sin(2 * np.pi * (150 + 150 * t) * t) + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_clone_models(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def hubert_reference(models):
    from transformers import HubertModel
    return HubertModel.from_pretrained(models[0]).eval()


@pytest.fixture(scope="module")
def cloning_tts(hub_dir, models):
    return fastbark.Bark.from_pretrained(hub_dir, hubert=str(models[0]), quantizer=str(models[1]))


# ------------------------------------------------------------------ HuBERT


def block9(reference, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return reference(wave, output_hidden_states=True).hidden_states[9]  # [0] is block 1's input


@pytest.mark.parametrize("samples", [16_000, 16_399, 48_123])
def test_hubert_block_9_equals_transformers(models, hubert_reference, samples):
    ours = load_hubert(models[0], output_layer=9)
    assert len(ours.encoder.layers) == 9  # the 10th block of the file is never built
    wave = torch.from_numpy(sweep(samples / 16_000, 16_000))[None]
    with torch.inference_mode():
        got = ours(wave)
    want = block9(hubert_reference, wave)
    assert got.shape == want.shape == (1, (samples - 400) // 320 + 1, TINY_HUBERT["hidden_size"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def _old_names(state: dict) -> dict:
    """transformers' weight-norm names before parametrizations (pytorch_model.bin files of the hub)."""
    return {k.replace("parametrizations.weight.original0", "weight_g")
             .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}


def _fairseq_names(state: dict) -> dict:
    """Our hub names back to fairseq's (the inverse of loading/hubert.py's map)."""
    out = {}
    for key, value in _old_names(state).items():
        key = key.replace("feature_extractor.conv_layers.0.layer_norm.", "feature_extractor.conv_layers.0.2.")
        for i in range(7):
            key = key.replace(f"feature_extractor.conv_layers.{i}.conv.", f"feature_extractor.conv_layers.{i}.0.")
        key = key.replace("feature_projection.layer_norm.", "layer_norm.")
        key = key.replace("feature_projection.projection.", "post_extract_proj.")
        key = key.replace("encoder.pos_conv_embed.conv.", "encoder.pos_conv.0.")
        key = key.replace(".attention.", ".self_attn.").replace(".feed_forward.intermediate_dense.", ".fc1.")
        key = key.replace(".feed_forward.output_dense.", ".fc2.")
        if key.startswith("encoder.layers.") and ".layer_norm." in key:
            key = key.replace(".layer_norm.", ".self_attn_layer_norm.")
        out[key] = value
    return out


class FairseqConfig:  # stands for fairseq's dataclasses inside its checkpoints
    def __init__(self):
        self.model = {"_name": "hubert", "encoder_layers": 10}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_hubert_from_old_names_and_from_fairseq_pickles_without_running_them(models, hubert_reference, tmp_path,
                                                                            capsys):
    wave = torch.from_numpy(sweep(1.3, 16_000))[None]
    want = block9(hubert_reference, wave)
    state = hubert_reference.state_dict()
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((models[0] / "config.json").read_text())
    torch.save(_old_names(state), old / "pytorch_model.bin")
    checkpoint = {"args": argparse.Namespace(layers=10), "cfg": FairseqConfig(), "evil": Evil(),
                  "model": {**_fairseq_names(state), "mask_emb": torch.zeros(128), "label_embs_concat": torch.zeros(4)}}
    torch.save(checkpoint, tmp_path / "hubert_base_ls960.pt")
    torch.save(state, tmp_path / "plain_state.pt")
    for source in (old, tmp_path / "hubert_base_ls960.pt", tmp_path / "plain_state.pt"):
        with torch.inference_mode():
            got = load_hubert(source)(wave)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert "pwned" not in capsys.readouterr().out  # print was never called: it was replaced by an inert stand-in
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_hubert(tmp_path / "junk.pt")
    torch.save({"model": {"feature_extractor.conv_layers.0.0.weight": torch.zeros(1)}}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match="not HuBERT"):
        load_hubert(tmp_path / "part.pt")
    (old / "config.json").write_text(json.dumps({"do_stable_layer_norm": True}))
    with pytest.raises(CheckpointError, match="do_stable_layer_norm"):
        load_hubert(old)


# ------------------------------------------------------------------ end to end


def test_a_clip_becomes_a_voice_that_saves_loads_and_speaks(cloning_tts, tmp_path):
    seconds = 3.3
    stereo = np.stack([sweep(seconds), 0.5 * sweep(seconds, seed=1)], axis=1)  # (T, 2)
    sf.write(tmp_path / "clip.wav", stereo, RATE, subtype="FLOAT")
    seen = []
    voice = cloning_tts.voice_from_audio(tmp_path / "clip.wav", progress=seen.append)
    n = (round(seconds * 16_000) - 400) // 320 + 1  # HuBERT frames: ~49.9 per second
    m = math.ceil(seconds * 24_000 / 320)  # EnCodec frames: 75 per second
    assert voice.semantic_prompt.shape == (n,) and voice.fine_prompt.shape == (8, m)
    assert voice.coarse_prompt.shape == (2, m) and np.array_equal(voice.coarse_prompt, voice.fine_prompt[:2])
    assert all(a.dtype == np.int64 for a in (voice.semantic_prompt, voice.coarse_prompt, voice.fine_prompt))
    assert round(m / n, 1) == 1.5 and voice.semantic_prompt.max() < 10_000 and voice.fine_prompt.max() < 1024
    assert [p.done for p in seen] == [0, 1, 2, 3, 4] and seen[0].stage == "clone"
    # the same samples as an array (T, 2) or (2, T) give the same voice
    for array in (stereo, stereo.T):
        same = cloning_tts.voice_from_audio(array, RATE)
        assert all(np.array_equal(getattr(same, k), getattr(voice, k)) for k in ("semantic_prompt", "fine_prompt"))
    voice.save(tmp_path / "me.npz")
    loaded = Voice.from_npz(tmp_path / "me.npz")
    assert np.array_equal(loaded.semantic_prompt, voice.semantic_prompt)
    a = cloning_tts.generate("hello world", voice=voice, seed=3, max_semantic_tokens=40)
    b = cloning_tts.generate("hello world", voice=str(tmp_path / "me.npz"), seed=3, max_semantic_tokens=40)
    c = cloning_tts.generate("hello world", seed=3, max_semantic_tokens=40)
    assert a.audio.size > 0 and np.array_equal(a.audio, b.audio) and not np.array_equal(a.audio, c.audio)
    report = str(cloning_tts.cloner().report())
    assert "cloning on cpu" in report and "version 1" in report


def test_a_long_clip_uses_its_end_with_a_warning(cloning_tts):
    long = sweep(MAX_CLIP_SECONDS + 5)
    with pytest.warns(UserWarning, match=r"20.0 s long; its last 15 s are used"):
        voice = cloning_tts.voice_from_audio(long, RATE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tail = cloning_tts.voice_from_audio(long[-int(MAX_CLIP_SECONDS * RATE):], RATE)
    assert np.array_equal(voice.semantic_prompt, tail.semantic_prompt)
    assert np.array_equal(voice.fine_prompt, tail.fine_prompt)


def test_a_two_hour_file_costs_what_its_end_does(tmp_path):
    rate = 8_000
    with sf.SoundFile(tmp_path / "long.wav", "w", rate, 1, subtype="PCM_16") as f:
        block = np.zeros(rate * 600, np.float32)
        for _ in range(12):  # two hours of silence ...
            f.write(block)
        f.write(sweep(4, rate))  # ... ending in 4 s of sound
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="7204.0 s long"):
        clip = read_clip(tmp_path / "long.wav")
    assert time.perf_counter() - start < 2.0
    assert clip.seconds == MAX_CLIP_SECONDS and clip.total_seconds == pytest.approx(7204)
    np.testing.assert_allclose(clip.samples[-4 * rate:], sweep(4, rate), atol=1 / 32768)


def test_formats_rates_and_channels(tmp_path):
    """wav, flac, ogg and mp3 through libsndfile; m4a through FFmpeg (PyAV), whose long files are read from a
    seek near their end; a stereo 96 kHz file is mixed to mono and resampled (documented, not an error)."""
    import av
    x = sweep(2.0, 48_000)
    for ext in ("wav", "flac", "ogg", "mp3"):
        sf.write(tmp_path / f"c.{ext}", x, 48_000)
        clip = read_clip(tmp_path / f"c.{ext}")
        assert clip.sample_rate == 48_000 and abs(clip.seconds - 2.0) < 0.1, ext
    hi = sweep(2.0, 96_000)
    sf.write(tmp_path / "hi.flac", np.stack([hi, hi], 1), 96_000, subtype="PCM_24")
    clip = read_clip(tmp_path / "hi.flac")
    assert clip.sample_rate == 96_000 and clip.resampled(16_000).shape == (32_000,)
    np.testing.assert_allclose(clip.samples, hi, atol=1e-5)
    seconds = MAX_CLIP_SECONDS + 10
    with av.open(str(tmp_path / "c.m4a"), "w") as out:
        stream = out.add_stream("aac", rate=24_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(sweep(seconds, 24_000)[None], format="fltp", layout="mono")
        frame.sample_rate = 24_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.warns(UserWarning, match="its last 15 s"):
        clip = read_clip(tmp_path / "c.m4a")
    assert clip.sample_rate == 24_000 and clip.seconds == MAX_CLIP_SECONDS
    assert 0.25 < np.abs(clip.samples).max() < 0.4  # the tone's level, decoded as float


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"root:x:0:0\n" * 100), "not audio"),
    (lambda p: p.write_bytes(b""), "not audio"),
    (lambda p: sf.write(p, np.zeros(RATE * 3, np.float32), RATE), "silent"),
    (lambda p: sf.write(p, sweep(0.3), RATE), "0.30 s long; a voice needs at least 1 s"),
    (lambda p: sf.write(p, np.sign(sweep(3)), RATE), "clipped"),
    (lambda p: sf.write(p, sweep(3), 4_000), "sample rate 4000"),
])
def test_bad_clips_are_clear_errors(tmp_path, make, match):
    path = tmp_path / "clip.wav"
    make(path)
    with pytest.raises(BadInput, match=match):
        read_clip(path)


def test_bad_arrays_are_clear_errors():
    with pytest.raises(BadInput, match="give its sample_rate"):
        read_clip(sweep(2))
    with pytest.raises(BadInput, match="NaN"):
        read_clip(np.full(RATE * 2, np.nan, np.float32), RATE)
    with pytest.raises(BadInput, match="must lie in"):
        read_clip(sweep(2) * 1000, RATE)
    with pytest.raises(BadInput, match="which axis is channels"):
        read_clip(np.zeros((100, 100), np.float32), RATE)
    with pytest.raises(BadInput, match="does not exist"):
        read_clip("/no/such/clip.wav")
    pcm = (sweep(2) * 32767).astype(np.int16)  # integer PCM is scaled by its type
    np.testing.assert_allclose(read_clip(pcm, RATE).samples, sweep(2), atol=1e-4)


def test_quantizer_choices(models, tmp_path):
    assert quantizer_file(models[1]) == str(models[1])
    for bad in ("zz", "", "owner/repo:file.txt"):
        with pytest.raises(BadInput, match="quantizer"):
            quantizer_file(bad)
    with pytest.raises(BadInput):
        fastbark.CloneOptions(quantizer=" ")


# ------------------------------------------------------------------ command and server


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fastbark", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_clone_command(models, hub_dir, tmp_path):
    hubert, quantizer = models
    flags = ["--hubert", hubert, "--quantizer", quantizer, "--codec", hub_dir]
    sf.write(tmp_path / "a.wav", sweep(3), RATE)
    sf.write(tmp_path / "b.flac", sweep(2.5, seed=2), RATE)
    sf.write(tmp_path / "short.wav", sweep(0.3), RATE)
    done = run_cli("clone", "a.wav", "-o", "me.npz", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cloning on cpu" in done.stderr and "wrote me.npz" in done.stderr
    done = run_cli("clone", "a.wav", "b.flac", "-o", "voices", "-q", *flags, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    alone, together = Voice.from_npz(tmp_path / "me.npz"), Voice.from_npz(tmp_path / "voices" / "a.npz")
    assert np.array_equal(alone.semantic_prompt, together.semantic_prompt)  # each clip runs alone
    assert np.array_equal(alone.fine_prompt, together.fine_prompt)
    assert (tmp_path / "voices" / "b.npz").is_file()
    # a bad clip among good ones: refused before any model loads, nothing written
    done = run_cli("clone", "a.wav", "short.wav", "-o", "more", *flags, cwd=tmp_path)
    assert done.returncode == 2 and "short.wav is 0.30 s long" in done.stderr and not list((tmp_path / "more").iterdir())
    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pth")
    done = run_cli("clone", "a.wav", "-o", "evil.npz", "--quantizer", "evil.pth", cwd=tmp_path)
    assert done.returncode == 2 and "weights_only" in done.stderr and "pwned" not in done.stdout
    assert not (tmp_path / "evil.npz").exists()
    done = run_cli("clone", "a.wav", "b.flac", "-o", "two.npz", cwd=tmp_path)
    assert done.returncode == 2 and "must be a folder" in done.stderr
    sf.write(tmp_path / "sub.wav", sweep(2), RATE)
    (tmp_path / "x").mkdir()
    sf.write(tmp_path / "x" / "a.wav", sweep(2), RATE)
    done = run_cli("clone", "a.wav", "x/a.wav", "-o", "same", cwd=tmp_path)
    assert done.returncode == 2 and "same name" in done.stderr


def test_say_with_a_voice_from_a_clip(models, hub_dir, tmp_path, cloning_tts):
    sf.write(tmp_path / "a.wav", sweep(3), RATE)
    flags = ["-m", hub_dir, "--hubert", models[0], "--quantizer", models[1], "--seed", 5,
             "--max-semantic-tokens", 30, "-q"]
    done = run_cli("say", "hello world", "--voice-audio", "a.wav", "-o", "out.wav", "--save-voice", "v.npz", *flags,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    want = cloning_tts.generate("hello world", voice=cloning_tts.voice_from_audio(tmp_path / "a.wav"), seed=5,
                                max_semantic_tokens=30)
    got, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert len(got) == len(want.audio) and rate == 24_000
    done = run_cli("say", "hi", "--voice-audio", "a.wav", "--voice", "announcer", "-o", "x.wav", *flags, cwd=tmp_path)
    assert done.returncode == 2 and "--voice-audio" in done.stderr and not (tmp_path / "x.wav").exists()
    done = run_cli("say", "hi", "--voice-audio", "nothing.wav", "-o", "x.wav", *flags, cwd=tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_the_server_makes_voices_from_uploaded_clips(cloning_tts, tmp_path):
    from test_server import client, pcm16, serving
    sf.write(tmp_path / "a.flac", sweep(3), RATE)
    with serving(cloning_tts, tmp_path) as (url, _):
        answer = httpx.put(url + "/v1/audio/voices/mine", content=(tmp_path / "a.flac").read_bytes(), timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["from"] == "audio" and answer.json()["frames"] == 225
        assert "mine" in httpx.get(url + "/v1/audio/voices").json()["uploaded"]
        got = client(url).audio.speech.create(model="tts-1", voice="mine", input="the dog", response_format="pcm",
                                              extra_body={"seed": 4, "max_semantic_tokens": 30}).content
        voice = cloning_tts.voice_from_audio(tmp_path / "a.flac")
        assert got == pcm16(cloning_tts.generate("the dog", voice=voice, seed=4, max_semantic_tokens=30).audio)
        for params, content, status, words in [
            ({"quantizer": "/etc/passwd"}, (tmp_path / "a.flac").read_bytes(), 400, "unknown"),
            ({}, b"\x00" * 5000, 400, "not audio"),
            ({}, b"", 400, "empty"),
        ]:
            answer = httpx.put(url + "/v1/audio/voices/other", params=params, content=content, timeout=60)
            assert answer.status_code == status and words in answer.json()["error"]["message"], answer.text
        sf.write(tmp_path / "short.wav", sweep(0.3), RATE)
        answer = httpx.put(url + "/v1/audio/voices/other", content=(tmp_path / "short.wav").read_bytes())
        assert answer.status_code == 400 and "at least 1 s" in answer.json()["error"]["message"]
        assert "other" not in httpx.get(url + "/v1/audio/voices").json()["uploaded"]
