"""Voices: presets, .npz files, dicts, saving a generation as a voice, and every kind of bad voice."""

import json

import numpy as np
import pytest

from fastbark import BadInput, Voice


def test_preset_npz_and_dict_are_the_same_voice(tts, voice_arrays, tmp_path):
    arrays = voice_arrays["announcer"]
    np.savez(tmp_path / "announcer.npz", **arrays)
    preset = tts.load_voice("announcer")
    for other in (tts.load_voice(tmp_path / "announcer.npz"), tts.load_voice(str(tmp_path / "announcer.npz")),
                  tts.load_voice(arrays), tts.load_voice(Voice.from_dict(arrays))):
        for key in arrays:
            np.testing.assert_array_equal(getattr(preset, key), getattr(other, key))
    a = tts.text_to_semantic("hello", voice="announcer", temperature=0, max_tokens=20, min_eos_p=None)
    b = tts.text_to_semantic("hello", voice=tmp_path / "announcer.npz", temperature=0, max_tokens=20, min_eos_p=None)
    np.testing.assert_array_equal(a, b)


def test_voice_dtypes_accepted(voice_arrays):
    arrays = voice_arrays["announcer"]
    for dtype in (np.int64, np.int32, np.uint16):
        voice = Voice.from_dict({k: v.astype(dtype) for k, v in arrays.items()})
        assert voice.semantic_prompt.dtype == np.int64
        np.testing.assert_array_equal(voice.fine_prompt, arrays["fine_prompt"])


def test_generation_saved_as_voice_round_trips(tts, tmp_path):
    out = tts.generate("the dog is cute", seed=0, max_semantic_tokens=30)
    out.save_voice(tmp_path / "mine.npz")
    voice = Voice.from_npz(tmp_path / "mine.npz")
    np.testing.assert_array_equal(voice.semantic_prompt, out.semantic_tokens)
    np.testing.assert_array_equal(voice.coarse_prompt, out.coarse_tokens)
    np.testing.assert_array_equal(voice.fine_prompt, out.fine_tokens)
    with np.load(tmp_path / "mine.npz", allow_pickle=False) as data:  # Suno's key names
        assert sorted(data.files) == ["coarse_prompt", "fine_prompt", "semantic_prompt"]
    again = tts.generate("hello", voice=tmp_path / "mine.npz", seed=0, max_semantic_tokens=10)
    assert again.audio.size > 0


def test_unknown_voice_lists_near_names(tts):
    with pytest.raises(BadInput, match=r"unknown voice 'v2/en_speaker_2'.*v2/en_speaker_1"):
        tts.load_voice("v2/en_speaker_2")
    with pytest.raises(BadInput, match="unknown voice"):
        tts.load_voice("nobody")


def test_pickled_npz_refused(tmp_path, voice_arrays):
    arrays = dict(voice_arrays["announcer"], semantic_prompt=np.array([{"evil": 1}], dtype=object))
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(BadInput, match="not a readable .npz"):
        Voice.from_npz(tmp_path / "pickled.npz")


def test_malformed_and_missing_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    with pytest.raises(BadInput, match="not a readable .npz"):
        Voice.from_npz(tmp_path / "junk.npz")
    with pytest.raises(BadInput, match="does not exist"):
        Voice.from_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", semantic_prompt=np.arange(5))
    with pytest.raises(BadInput, match="missing coarse_prompt, fine_prompt"):
        Voice.from_npz(tmp_path / "partial.npz")


@pytest.mark.parametrize("change, message", [
    ({"coarse_prompt": np.zeros((3, 10), int)}, r"coarse_prompt must have shape \(2, n\)"),
    ({"semantic_prompt": np.zeros((2, 5), int)}, r"semantic_prompt must have shape \(n,\)"),
    ({"semantic_prompt": np.array([5, 10_000])}, r"outside \[0, 10000\)"),
    ({"fine_prompt": np.full((8, 10), 1024)}, r"outside \[0, 1024\)"),
    ({"coarse_prompt": -np.ones((2, 10), int)}, r"outside \[0, 1024\)"),
    ({"semantic_prompt": np.zeros(5, np.float32)}, "integer tokens"),
    ({"semantic_prompt": np.zeros(0, int)}, "empty"),
    ({"fine_prompt": np.zeros((8, 11), int)}, "same audio"),
])
def test_bad_prompts(change, message):
    arrays = {"semantic_prompt": np.arange(15), "coarse_prompt": np.zeros((2, 10), int),
              "fine_prompt": np.zeros((8, 10), int)}
    with pytest.raises(BadInput, match=message):
        Voice.from_dict({**arrays, **change})


def test_bad_voice_type(tts):
    with pytest.raises(BadInput, match="voice must be"):
        tts.load_voice(42)


def test_preset_paths_cannot_leave_the_checkpoint(hub_dir, tmp_path):
    import shutil

    import fastbark
    copy = tmp_path / "copy"
    shutil.copytree(hub_dir, copy)
    table = json.loads((copy / "speaker_embeddings_path.json").read_text())
    table["announcer"]["semantic_prompt"] = "../../etc/passwd"
    (copy / "speaker_embeddings_path.json").write_text(json.dumps(table))
    with pytest.raises(BadInput, match="outside the checkpoint"):
        fastbark.Bark.from_pretrained(copy).load_voice("announcer")


def test_stage_inputs_are_checked(tts):
    with pytest.raises(BadInput, match=r"semantic tokens has tokens outside \[0, 10000\)"):
        tts.semantic_to_coarse(np.array([1, 10_000]))
    with pytest.raises(BadInput, match=r"coarse tokens must have shape \(2, n\)"):
        tts.coarse_to_fine(np.zeros((3, 4), int))
    with pytest.raises(BadInput, match="fine tokens must hold integer tokens"):
        tts.decode(np.zeros((8, 4), np.float32))
    assert tts.decode(np.zeros((8, 0), int)).shape == (0,)
