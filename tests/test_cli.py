"""The `fastbark` command: WAV out, stdin and stdout, voices, and exit status 2 with a clear line on bad input."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from fastbark.cli import main

FAST = ["--max-semantic-tokens", "12", "--seed", "0", "-q"]


def run(*args, stdin: bytes | None = None, module: bool = False):
    command = [sys.executable, "-m", "fastbark"] if module else [os.path.join(os.path.dirname(sys.executable), "fastbark")]
    return subprocess.run(command + list(args), input=stdin, capture_output=True, timeout=300)


def test_say_writes_a_24khz_mono_wav(hub_dir, tmp_path):
    out = tmp_path / "out.wav"
    proc = run("say", "the dog is cute", "--model", str(hub_dir), "-o", str(out), "--threads", "1", *FAST)
    assert proc.returncode == 0, proc.stderr.decode()
    audio, rate = sf.read(out)
    info = sf.info(out)
    assert rate == 24_000 and info.channels == 1 and audio.ndim == 1 and len(audio) > 0
    assert len(audio) % 320 == 0


def test_stdin_to_stdout_with_python_m(hub_dir):
    proc = run("say", "--model", str(hub_dir), "-o", "-", *FAST, stdin=b"hello world\n", module=True)
    assert proc.returncode == 0, proc.stderr.decode()
    audio, rate = sf.read(io.BytesIO(proc.stdout))
    assert rate == 24_000 and len(audio) > 0


def test_text_file_voice_and_save_voice(hub_dir, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("café naïve\n", encoding="utf-8")
    args = ["say", "--file", str(tmp_path / "text.txt"), "--model", str(hub_dir), "--voice", "announcer",
            "-o", str(tmp_path / "a.wav"), "--save-voice", str(tmp_path / "v.npz"), *FAST]
    assert main(args) == 0
    with np.load(tmp_path / "v.npz") as voice:
        assert voice["fine_prompt"].shape[0] == 8
    # the same seed and voice file give the same audio
    again = ["say", "café naïve", "--model", str(hub_dir), "--voice", "announcer", "-o", str(tmp_path / "b.wav"),
             *FAST]
    assert main(again) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0])


def test_int8_mode(hub_dir, tmp_path):
    assert main(["say", "the dog is cute", "--model", str(hub_dir), "--quantize", "int8", "-o",
                 str(tmp_path / "q.wav"), *FAST]) == 0
    audio, rate = sf.read(tmp_path / "q.wav")
    assert rate == 24_000 and len(audio) > 0


def test_voices_lists_presets(hub_dir, capsys):
    assert main(["voices", "--model", str(hub_dir)]) == 0
    assert capsys.readouterr().out.split() == ["announcer", "v2/en_speaker_1"]


def bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "pickled.npz", semantic_prompt=np.array([object()]), coarse_prompt=np.zeros((2, 3), int),
             fine_prompt=np.zeros((8, 3), int))
    np.savez(tmp_path / "shape.npz", semantic_prompt=np.arange(9), coarse_prompt=np.zeros((3, 3), int),
             fine_prompt=np.zeros((8, 3), int))
    np.savez(tmp_path / "range.npz", semantic_prompt=np.array([1, 20_000]), coarse_prompt=np.zeros((2, 3), int),
             fine_prompt=np.zeros((8, 3), int))


@pytest.mark.parametrize("extra, message", [
    (["   "], "text is empty"),
    (["hi", "--voice", "v2/en_speakr_1"], "unknown voice 'v2/en_speakr_1'. Did you mean: v2/en_speaker_1"),
    (["hi", "--voice", "{tmp}/junk.npz"], "not a readable .npz"),
    (["hi", "--voice", "{tmp}/pickled.npz"], "not a readable .npz"),
    (["hi", "--voice", "{tmp}/shape.npz"], r"coarse_prompt must have shape (2, n)"),
    (["hi", "--voice", "{tmp}/range.npz"], "outside [0, 10000)"),
    (["hi", "--dtype", "half8"], "--dtype 'half8' is unknown; accepted: float32"),
    (["hi", "--device", "tpu"], "--device 'tpu' is unknown"),
    (["hi", "--model", "{tmp}"], "holds no Bark checkpoint"),
    (["hi", "--temperature-typo"], "unrecognized arguments: --temperature-typo"), # argparse's, one line too
    (["hi", "--semantic-temperature", "-1"], "--semantic-temperature must be a number >= 0"),
    (["hi", "--threads", "0"], "--threads must be an integer in 1..1024"),
    (["hi", "--threads", "99999999999999999999999"], "--threads must be an integer in 1..1024"),
    (["hi", "--quantize", "int8", "--dtype", "float16"], "not float16"),
])
def test_bad_input_exits_2_with_a_clear_message(hub_dir, tmp_path, capsys, extra, message):
    bad_files(tmp_path)
    args = ["say", *[a.replace("{tmp}", str(tmp_path)) for a in extra], "-o", str(tmp_path / "x.wav"), "-q"]
    if "--model" not in args:
        args += ["--model", str(hub_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbark: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


def test_partial_checkpoint_exit_2(hub_dir, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(hub_dir, tmp_path / "partial")
    state = load_file(tmp_path / "partial" / "model.safetensors")
    del state["semantic.lm_head.weight"]
    save_file(state, tmp_path / "partial" / "model.safetensors")
    proc = run("say", "hi", "--model", str(tmp_path / "partial"), "-o", str(tmp_path / "x.wav"), "-q")
    assert proc.returncode == 2
    assert b"missing lm_head.weight" in proc.stderr and b"Traceback" not in proc.stderr


def test_no_text_at_all(hub_dir, tmp_path):
    proc = run("say", "--model", str(hub_dir), "-o", str(tmp_path / "x.wav"), stdin=b"")
    assert proc.returncode == 2 and b"text is empty" in proc.stderr


# ------------------------------------------------------------------ polish a demanding user notices (issue 23)


def test_format_any_case_aac_and_formats_that_contradict_the_name(hub_dir, tmp_path, capsys):
    assert main(["say", "the dog", "--model", str(hub_dir), "-o", str(tmp_path / "a.mp3"), "--format", "MP3",
                 *FAST]) == 0
    assert sf.info(tmp_path / "a.mp3").format == "MP3"
    assert main(["say", "the dog", "--model", str(hub_dir), "-o", str(tmp_path / "a.aac"), *FAST]) == 0
    import av
    with av.open(str(tmp_path / "a.aac")) as container:
        assert container.streams.audio[0].codec_context.name == "aac" and container.streams.audio[0].rate == 24_000
    assert main(["say", "the dog", "--model", str(hub_dir), "-o", str(tmp_path / "x.wav"), "--format", "mp3",
                 *FAST]) == 2
    assert "named .wav but the format is mp3" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()
    assert main(["say", "the dog", "--model", str(hub_dir), "-o", str(tmp_path / "o.ogg"), "--format", "opus",
                 *FAST]) == 0  # Opus in an Ogg file is what .ogg means too


def test_help_version_and_mistyped_flags(capsys):
    assert main([]) == 0 and "say" in capsys.readouterr().out  # bare `fastbark`: the help
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("fastbark ")
    with pytest.raises(SystemExit):
        main(["say", "--help"])
    assert "(default out.wav)" in capsys.readouterr().out
    assert main(["say", "hi", "--hlep"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --hlep; did you mean --help? (see fastbark say --help)" in err


def test_ctrl_c_in_say_does_not_talk_about_resuming(hub_dir, tmp_path, capsys, monkeypatch):
    import fastbark.engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fastbark.engine.Bark, "from_pretrained", interrupted)
    assert main(["say", "hi", "-o", str(tmp_path / "x.wav")]) == 130
    assert capsys.readouterr().err.strip() == "fastbark: interrupted"


# ------------------------------------------------------------------ fastbark doctor (issue 18, item 6)


def test_doctor_reports_the_machine_and_each_choice(tmp_path, capsys):
    import json
    import torch
    assert main(["doctor", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    for expected in ("torch build:", "GPUs torch sees:", "CPU features: AVX2", "C compiler:", "[cpu, float32]",
                     "backend cpu on cpu, float32", "[cpu, float32, int8]", "triton: "):
        assert expected in out, expected
    import triton  # a test dependency: the fused step's kernels run in its interpreter
    assert f"triton: {triton.__version__} (the CUDA backend's fused decode step)" in out
    report = json.loads((tmp_path / "d.json").read_text())
    chosen = {(c["device"], c["dtype"], c["quantize"]): c for c in report["choices"]}
    assert chosen[("cpu", "float32", None)]["backend"] == "cpu" and set(report["cpu_features"]) >= {"AVX2", "AMX"}
    assert report["versions"]["torch build"].startswith("CUDA") == bool(torch.version.cuda)


def test_doctor_reads_cpu_features_and_refusals():
    from fastbark.doctor import choose, cpu_info
    model, features = cpu_info("model name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n")
    assert model == "Some CPU"
    assert features == {"AVX2": True, "AVX-512": True, "VNNI": True, "AVX-512 BF16": False, "AMX": True}
    assert "not float16" in choose("cpu", "float16", "int8").refused
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp sve i8mm\nCPU implementer\t: 0x41\n" \
          "CPU part\t: 0xd40\n\nprocessor\t: 1\nFeatures\t: fp asimd\n"
    model, features = cpu_info(arm)
    assert model == "0x41 0xd40"  # an ARM core names itself by implementer and part
    assert features == {"NEON": True, "SVE": True, "int8 dot product": True, "BF16": False,
                         "int8 matrix multiply": True}
    from fastbark.backends.cpu.choice import cpu_identity
    assert cpu_identity(arm)[1] == "fp asimd evtstrm aes crc32 asimddp sve i8mm"  # what the C library is keyed by


def test_cuda_without_cuda_fails_at_once_with_a_hint(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["say", "hi", "--device", "cuda", "-o", "x.wav"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbark: error: --device 'cuda' asked for, but CUDA is not available") and \
        "fastbark doctor" in err and len(err.splitlines()) == 1
