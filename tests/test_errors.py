"""Every bad input a clean error, before any work is wasted, and nothing wrong written."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbark
from fastbark import BadInput, CheckpointError
from fastbark.cli import main

FAST = ["--max-semantic-tokens", "6", "--seed", "0", "-q"]


def say(hub_dir, *args):
    return main(["say", *args, "--model", str(hub_dir)])


# ------------------------------------------------------------------ silent wrong results


@pytest.mark.parametrize("text", ["\x00\x01\x02", "\u200b\u200c\u200d", "\x7f \u200b\x1b"])
def test_text_with_nothing_speakable(tts, hub_dir, tmp_path, capsys, text):
    with pytest.raises(BadInput, match="nothing to speak"):
        tts.generate(text)
    assert say(hub_dir, text, "-o", str(tmp_path / "x.wav"), *FAST) == 2
    assert "nothing to speak" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


def test_nan_weights_are_refused_when_loaded(hub_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    shutil.copytree(hub_dir, tmp_path / "nan")
    state = load_file(tmp_path / "nan" / "model.safetensors")
    state["coarse_acoustics.layers.0.mlp.in_proj.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "nan" / "model.safetensors")
    with pytest.raises(CheckpointError, match="coarse model weight layers.0.mlp.in_proj.weight holds NaN"):
        fastbark.Bark.from_pretrained(tmp_path / "nan")


def test_non_finite_logits_name_the_model_and_stage(hub_dir):
    tts = fastbark.Bark.from_pretrained(hub_dir, cpu_kernel="plain")
    with torch.no_grad():
        tts.fine_model.layernorm_final.weight.fill_(float("inf"))  # as if float16 had overflowed there
    with pytest.raises(CheckpointError, match="the fine model gave NaN or infinite logits in the fine stage"):
        tts.generate("the dog is cute", max_semantic_tokens=5)


def test_save_voice_to_a_folder_or_without_npz(tts, hub_dir, tmp_path, capsys):
    result = tts.generate("hello", max_semantic_tokens=5, seed=0)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(BadInput, match="is a folder"):
        result.save_voice(tmp_path / "dir.npz")
    with pytest.raises(BadInput, match="must end in .npz"):
        result.save_voice(tmp_path / "me")
    assert list(tmp_path.iterdir()) == [tmp_path / "dir.npz"]
    # on the CLI, before generating: no audio file either
    assert say(hub_dir, "hi", "-o", str(tmp_path / "a.wav"), "--save-voice", str(tmp_path / "me"), *FAST) == 2
    assert "must end in .npz" in capsys.readouterr().err and not (tmp_path / "a.wav").exists()


def test_a_voice_saved_as_npz_hints_its_full_name(tts, tmp_path, monkeypatch):
    tts.generate("hello", max_semantic_tokens=5, seed=0).save_voice(tmp_path / "me.npz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput, match="'me.npz' exists: give its full name"):
        tts.generate("hello", voice="me")
    assert tts.load_voice("me.npz") is not None


# ------------------------------------------------------------------ errors before generation


@pytest.mark.parametrize("output, message", [
    ("{tmp}", "is a folder"),
    ("{tmp}/missing/x.wav", "does not exist"),
    ("{tmp}/x.txt", "cannot tell the audio format"),
    ("{tmp}/locked/x.wav", "permission denied"),
])
def test_outputs_are_checked_before_generating(hub_dir, tmp_path, capsys, monkeypatch, output, message):
    (tmp_path / "locked").mkdir(mode=0o500)
    import fastbark.engine
    monkeypatch.setattr(fastbark.engine.Bark, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    if message == "permission denied" and subprocess.run(["id", "-u"], capture_output=True).stdout.strip() == b"0":
        monkeypatch.setattr("os.access", lambda path, mode: False)  # root may write anywhere: act as a user
    assert say(hub_dir, "hi", "-o", output.replace("{tmp}", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbark: error: ") and message in err and len(err.splitlines()) == 1


def test_save_voice_place_is_checked_before_generating(hub_dir, tmp_path, capsys):
    assert say(hub_dir, "hi", "-o", str(tmp_path / "a.wav"), "--save-voice", str(tmp_path / "no" / "v.npz"),
               *FAST) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "opus", "mp3", "pcm"])
def test_every_output_format(hub_dir, tmp_path, fmt):
    import soundfile as sf
    out = tmp_path / f"x.{fmt}"
    assert say(hub_dir, "the dog", "-o", str(out), *FAST) == 0
    if fmt == "pcm":
        audio = np.frombuffer(out.read_bytes(), "<i2")
        assert len(audio) > 0 and len(audio) % 320 == 0
    else:
        info = sf.info(out)
        assert info.samplerate == 24_000 and info.channels == 1 and info.frames > 0
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_invalid_utf8(hub_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_bytes(b"caf\xe9 au lait")
    assert say(hub_dir, "--file", str(tmp_path / "t.txt"), "-o", str(tmp_path / "x.wav"), *FAST) == 2
    assert "not UTF-8" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "fastbark", "say", "--model", str(hub_dir), "-o",
                           str(tmp_path / "x.wav"), *FAST], input=b"\xff\xfe\xfa", capture_output=True, timeout=300)
    assert proc.returncode == 2 and b"not UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("kwargs, message", [
    (dict(semantic_temperature=1e-45), "at least 1e-06"), (dict(fine_temperature=1e-300), "at least 1e-06"),
    (dict(coarse_temperature=float("inf")), "finite"), (dict(semantic_temperature=float("nan")), "finite"),
    (dict(seed=2**64), "seed"), (dict(seed=-1), "seed"), (dict(seed=True), "seed"),
    (dict(options="fast"), "GenerationOptions"), (dict(top_k=True), "top_k"), (dict(batch_size=True), "batch_size"),
    (dict(max_semantic_tokens=True), "max_semantic_tokens"), (dict(allow_early_stop="no"), "allow_early_stop"),
])
def test_bad_api_values(tts, kwargs, message):
    with pytest.raises(BadInput, match=message):
        tts.generate("hello", **kwargs)


def test_tiny_temperatures_that_are_allowed_still_sample(tts):
    out = tts.generate("hello", semantic_temperature=1e-6, coarse_temperature=1e-6, fine_temperature=1e-6,
                       max_semantic_tokens=5, seed=1)
    assert np.isfinite(out.audio).all()


@pytest.mark.parametrize("source, error, message", [
    (None, BadInput, "hub id"), (123, BadInput, "hub id"), ("", BadInput, "hub id"),
    ("./no/such/folder", CheckpointError, "not found"),
])
def test_bad_sources(source, error, message):
    with pytest.raises(error, match=message):
        fastbark.Bark.from_pretrained(source)


def test_missing_codec_and_tokenizer_files_say_not_found(suno_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        fastbark.Bark.from_pretrained(suno_dir, codec=str(tmp_path / "encodec.th"))
    with pytest.raises(CheckpointError, match="not found"):
        fastbark.Bark.from_pretrained(suno_dir, tokenizer=str(tmp_path / "missing" / "vocab.txt"))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"), ("null", "must hold a JSON object, not null"), ("[1, 2]", "not list"),
    (json.dumps({"semantic_config": None}), "is not a Bark config"),
])
def test_garbage_config_json(hub_dir, tmp_path, content, message):
    shutil.copytree(hub_dir, tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        fastbark.Bark.from_pretrained(tmp_path / "c")
    assert "config" in str(info.value)


def test_wrongly_typed_config_json(hub_dir, tmp_path):
    shutil.copytree(hub_dir, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["semantic_config"]["num_layers"] = "two"
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="n_layer must be a positive integer"):
        fastbark.Bark.from_pretrained(tmp_path / "c")


@pytest.mark.parametrize("content", ["{oops", "null", "[]"])
def test_garbage_speaker_table(hub_dir, tmp_path, content):
    shutil.copytree(hub_dir, tmp_path / "c")
    (tmp_path / "c" / "speaker_embeddings_path.json").write_text(content)
    with pytest.raises(CheckpointError, match="voice preset table .*speaker_embeddings_path.json"):
        fastbark.Bark.from_pretrained(tmp_path / "c")


def test_a_non_npz_voice_file_is_named_as_such(tts, tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(BadInput, match="not a readable .npz voice: not a zip") as info:
        tts.generate("hi", voice=str(tmp_path / "passwd"))
    assert "allow_pickle" not in str(info.value)


def test_convert_checks_its_destination_first(hub_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(hub_dir), str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "ro").mkdir(mode=0o500)
    if not subprocess.run(["id", "-u"], capture_output=True).stdout.strip() == b"0":  # root writes anywhere
        assert main(["convert", str(hub_dir), str(tmp_path / "ro" / "out")]) == 2
    assert main(["convert", str(hub_dir), str(tmp_path / "ok")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ok", "ro"]  # no temporary folder left


def test_unreachable_hub_fails_fast_with_a_hint(tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("offline")
    from fastbark.loading.layouts import load_parts
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1"):
        load_parts("suno/bark-small", torch.device("cpu"), torch.float32, download=offline)


# ------------------------------------------------------------------ fuzz: the API and the CLI

ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=4), st.just(2**70))
OPTIONS = {"semantic_temperature": ANY, "coarse_temperature": ANY, "fine_temperature": ANY, "top_k": ANY,
           "top_p": ANY, "min_eos_p": ANY, "max_semantic_tokens": st.one_of(st.integers(-2, 6), ANY),
           "allow_early_stop": ANY, "sliding_window_len": st.one_of(st.integers(0, 400), ANY)}
TEXTS = st.one_of(st.text(max_size=30), st.text(alphabet=st.characters(exclude_categories=()), max_size=12),
                  st.sampled_from(["the dog", "\u200b", "", "   ", "café ♪ [laughs]", "a\ud800b"]),
                  st.integers(), st.none())  # any Unicode, lone surrogates included
VOICES = st.sampled_from([None, "announcer", "nobody", "{tmp}/bad.npz", "{tmp}/missing.npz", 3])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, voice=VOICES, seed=st.one_of(st.none(), ANY), batch_size=st.one_of(st.just(16), ANY),
       options=st.fixed_dictionaries({}, optional=OPTIONS))
def test_fuzz_api(tts, tmp_path, text, voice, seed, batch_size, options):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    if isinstance(voice, str):
        voice = voice.replace("{tmp}", str(tmp_path))
    options.setdefault("max_semantic_tokens", 4)
    try:
        out = tts.generate(text, voice=voice, seed=seed, batch_size=batch_size, **options)
    except BadInput:
        return
    assert isinstance(out, fastbark.Generation) and np.isfinite(out.audio).all()


FLAG_VALUES = ["0", "-1", "1e-45", "nan", "inf", "none", "x", "2", "99999999999999999999999", "0.5", "True"]
FLAGS = ["--semantic-temperature", "--top-k", "--top-p", "--min-eos-p", "--seed", "--threads", "--dtype",
         "--quantize", "--cpu-kernel", "--backend", "--voice", "--format", "--sliding-window-len",
         "--max-coarse-history", "--device"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(FLAGS), st.sampled_from(FLAG_VALUES)), max_size=3),
       output=st.sampled_from(["out.wav", "out.mp3", "out.txt", "sub", "missing/out.wav", "out.pcm"]),
       save_voice=st.sampled_from([None, "v.npz", "v", "sub"]))
def test_fuzz_cli(hub_dir, tmp_path_factory, capsys, pairs, output, save_voice):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "sub").mkdir()
    args = ["say", "the dog", "--model", str(hub_dir), "--max-semantic-tokens", "4", "-q", "-o", str(tmp / output)]
    for flag, value in pairs:
        args += [flag, value]
    if save_voice:
        args += ["--save-voice", str(tmp / save_voice)]
    status = main(args)
    err = capsys.readouterr().err
    written = sorted(p.name for p in tmp.iterdir() if p.name != "sub")
    if status == 0:
        assert (tmp / output).is_file() and (not save_voice or (tmp / save_voice).is_file())
    else:
        assert status == 2, err
        lines = err.strip().splitlines()  # warnings may come first, each one line; then the one error line
        assert lines[-1].startswith("fastbark: error: ") and all(line.startswith("fastbark: ") for line in lines)
        assert sum(line.startswith("fastbark: error: ") for line in lines) == 1, err
        assert written == [], (written, err)  # nothing written when the call failed


def test_offline_first_run_fails_at_once(monkeypatch, tmp_path):
    import socket
    import time
    from fastbark.loading import sources

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    sources.hub_unreachable.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match="Name or service not known.*HF_HUB_OFFLINE=1"):
            fastbark.Bark.from_pretrained("suno/bark-small", cache_dir=tmp_path / "hf")
    finally:
        sources.hub_unreachable.cache_clear()
    assert time.perf_counter() - start < 10  # no retries


# ------------------------------------------------------------------ what a careless user broke (issue 23)
# Each of these fails on the code before issue 23.

LONG = "The dog is cute. Hello world [laughs]. I a the dog. Café naïve, über señor. The world is cute. " * 3


def fastbark_cmd(*args):
    return [sys.executable, "-m", "fastbark", *args]


def test_text_that_is_not_valid_unicode_is_refused(tts, hub_dir, tmp_path, capsys):
    for text in ("a\ud800b", "\udcff", "fine, then \udfff"):
        with pytest.raises(BadInput, match="not valid Unicode: a lone surrogate U\\+D"):
            tts.generate(text, max_semantic_tokens=4)
        with pytest.raises(BadInput, match="lone surrogate"):
            tts.split(text)
    # a command-line argument that is not UTF-8 (Python reads its bytes as lone surrogates)
    proc = subprocess.run([sys.executable.encode(), b"-m", b"fastbark", b"say", b"caf\xe9 au lait", b"--model",
                           str(hub_dir).encode(), b"-o", str(tmp_path / "x.wav").encode(), b"-q"],
                          capture_output=True, timeout=300)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(b"fastbark: error: text is not valid Unicode") and not (tmp_path / "x.wav").exists()


def test_numpy_integer_seeds_are_seeds(tts):
    want = tts.generate("the dog", seed=3, max_semantic_tokens=5).audio
    np.testing.assert_array_equal(tts.generate("the dog", seed=np.int64(3), max_semantic_tokens=5).audio, want)
    np.testing.assert_array_equal(tts.generate(["the dog"], seed=[np.uint32(3)], max_semantic_tokens=5)[0].audio, want)
    with pytest.raises(BadInput, match="seed must be an integer"):
        tts.generate("the dog", seed=np.float64(3))


def test_a_reader_that_leaves_early_ends_the_run_quietly(hub_dir):
    proc = subprocess.Popen(fastbark_cmd("say", LONG, "--model", str(hub_dir), "-o", "-", "-q", "--max-chunk-tokens",
                                         "6", "--max-semantic-tokens", "6"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100  # `| head -c 100`: the reader takes 100 bytes and leaves
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err  # 128 + SIGPIPE, as a Unix tool ends
    assert "Traceback" not in err and "Error" not in err, err


def test_a_closed_or_terminal_standard_output_is_refused_before_loading(hub_dir):
    proc = subprocess.run(["bash", "-c", " ".join(fastbark_cmd("say", "hi", "--model", str(hub_dir), "-o", "-"))
                           + " >&-"], capture_output=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.decode().startswith("fastbark: error: standard output is closed")
    import pty
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(fastbark_cmd("say", "hi", "--model", str(hub_dir), "-o", "-"), stdout=follower,
                              stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2 and b"will not write binary audio to a terminal" in proc.stderr


def test_outputs_that_pass_a_permission_check_but_cannot_be_written(hub_dir, capsys, monkeypatch):
    if not os.access("/proc", os.W_OK):
        pytest.skip("needs /proc where access() allows root to write but where no file can be made")
    import fastbark.engine
    monkeypatch.setattr(fastbark.engine.Bark, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    for args in (["-o", "/proc/x.wav"], ["--subtitles", "/proc/x.srt"], ["--save-voice", "/proc/v.npz"]):
        assert say(hub_dir, "hi", *args) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastbark: error: cannot write") and len(err.splitlines()) == 1, err


def test_sigterm_leaves_no_partial_file(hub_dir, tmp_path):
    import signal
    import time
    proc = subprocess.Popen(fastbark_cmd("say", LONG * 3, "--model", str(hub_dir), "-o", str(tmp_path / "x.wav"), "-q",
                                         "--max-chunk-tokens", "6", "--max-semantic-tokens", "30", "--batch-size", "1"),
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # what timeout, systemd and docker stop send
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read().decode()
    assert err.strip() == "fastbark: terminated", err  # and no talk of resuming: say has nothing to resume
    assert list(tmp_path.iterdir()) == []
