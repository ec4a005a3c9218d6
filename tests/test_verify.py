"""Narration that checks itself (longform/verify.py): a fake speech recogniser that mishears chosen chunks
gets exactly those regenerated with the documented retry seeds, the best attempt kept and recorded, the
same alone, batched and streamed; the duration guard; bad options."""

import json

import numpy as np
import pytest

import fastbark
from fastbark import BadInput, CheckpointError
from fastbark.cli import main
from fastbark.longform.verify import normalize, retry_seed, word_error_rate
from fastbark.options import GenerationOptions

VOICE = "announcer"  # a given voice: every chunk is generated on its own, so attempts can be replayed
STORY = "The dog is cute. Hello my old world. I like it a lot."  # three chunks of 2 s at most
OPTIONS = dict(max_semantic_tokens=60, max_chunk_seconds=2)  # ~1.2 s of speech each: the duration passes


class Mishearing:
    """Hears each chunk's known audio as its text, except the (chunk, attempt) pairs in `mishear`."""

    def __init__(self, tts, text, seed, mishear, attempts=3, others=()):
        """`others`: (text, seed) of texts heard right, for runs that batch them with `text`."""
        self.heard, self.calls = {}, []
        options = GenerationOptions(max_semantic_tokens=OPTIONS["max_semantic_tokens"])
        for t, s, wrong in [(text, seed, mishear), *((t, s, set()) for t, s in others)]:
            job = tts.plan(t, VOICE, s, 16, None, None, dict(OPTIONS))[0][0]
            for c, (words, ids) in enumerate(zip(job.chunks, job.ids)):
                for a in range(attempts):
                    seed_ca = job.chunk_seed(c) if a == 0 else retry_seed(job.chunk_seed(c), a)
                    audio = tts.generate_chunks([ids], tts.load_voice(VOICE), options, [seed_ca])[0].audio
                    self.heard[audio.tobytes()] = "zzz qqq xxx" if (c, a) in wrong else words
            if t == text:
                self.chunks = job.chunks

    def transcribe(self, audio, sample_rate, language):
        assert sample_rate == 24_000 and language == "en"
        self.calls.append(audio.tobytes())
        return self.heard[audio.tobytes()]


def engine(hub_dir, transcriber) -> fastbark.Bark:
    tts = fastbark.Bark.from_pretrained(hub_dir)
    tts.transcriber = transcriber
    return tts


def test_misheard_chunks_are_regenerated_with_the_retry_seeds(hub_dir):
    plain = fastbark.Bark.from_pretrained(hub_dir)
    fake = Mishearing(plain, STORY, 11, mishear={(1, 0), (2, 0), (2, 1)}, others=[("I like the dog.", 12)])
    assert len(fake.chunks) == 3
    tts = engine(hub_dir, fake)
    out = tts.generate(STORY, voice=VOICE, seed=11, verify="asr", **OPTIONS)
    checks = [s.check for s in out.segments]
    assert [c.attempts for c in checks] == [1, 2, 3] and all(c.passed and c.wer == 0 for c in checks)
    reference = plain.generate(STORY, voice=VOICE, seed=11, **OPTIONS)
    np.testing.assert_array_equal(out.segments[0].semantic_tokens, reference.segments[0].semantic_tokens)
    for segment in out.segments[1:]:  # the kept attempts are not the first ones
        assert not any(np.array_equal(segment.semantic_tokens, r.semantic_tokens) for r in reference.segments)
    assert len(fake.calls) == 3 + 2 + 1  # every attempt heard once
    batched = tts.generate([STORY, "I like the dog."], voice=VOICE, seed=[11, 12], verify="asr", **OPTIONS)[0]
    streamed = np.concatenate([c.audio for c in tts.stream(STORY, voice=VOICE, seed=11, verify="asr", **OPTIONS)])
    np.testing.assert_array_equal(batched.audio, out.audio)
    np.testing.assert_array_equal(streamed, out.audio)


def test_the_best_attempt_is_kept_when_none_passes(hub_dir):
    plain = fastbark.Bark.from_pretrained(hub_dir)
    fake = Mishearing(plain, STORY, 3, mishear={(0, a) for a in range(3)})
    tts = engine(hub_dir, fake)
    out = tts.generate(STORY, voice=VOICE, seed=3, verify="asr", **OPTIONS)
    first = out.segments[0].check
    assert not first.passed and first.attempts == 3 and first.wer == 1.0 and first.transcript == "zzz qqq xxx"
    assert all(s.check.passed and s.check.attempts == 1 for s in out.segments[1:])


def test_the_duration_guard_catches_a_babbling_tail(tts):
    """Two words need ~0.7 s: 200 semantic tokens (4 s) is a tail of babble, 40 (0.8 s) is not."""
    forced = dict(seed=1, allow_early_stop=False)
    babble = tts.generate("Hi there.", verify="duration", max_semantic_tokens=200, **forced)
    check = babble.segments[0].check
    assert not check.passed and check.attempts == 3 and check.duration_ratio > 2.5 and check.wer is None
    fine = tts.generate("Hi there.", verify="duration", max_semantic_tokens=40, **forced)
    assert fine.segments[0].check.passed and fine.segments[0].check.attempts == 1
    off = tts.generate("Hi there.", max_semantic_tokens=40, **forced)
    np.testing.assert_array_equal(off.audio, fine.audio)  # a chunk that passes is the unchecked chunk
    assert off.segments[0].check is None


def test_word_error_rate_normalises_case_punctuation_and_cues():
    assert normalize("Hello, World! [laughs] ♪ la la ♪ It's") == "hello world it's"
    assert word_error_rate("Hello, world!", "hello world") == 0
    assert word_error_rate("the dog is cute", "the cat is cute") == 0.25
    assert word_error_rate("[laughs]", "") == 0
    assert word_error_rate("I have 42 dogs and 1,000 cats.", "i have forty-two dogs and one thousand cats") == 0
    assert normalize("Es kostet 3 Euro", "de") == "es kostet drei euro"


def test_asr_without_the_extra_names_it(hub_dir, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "soxr", None)  # as if `pip install fastbark[verify]` was not done
    tts = fastbark.Bark.from_pretrained(hub_dir)
    with pytest.raises(BadInput, match=r"verify asr needs the verify extra: pip install 'fastbark\[verify\]'"):
        tts.generate("Hi there.", verify="asr", max_semantic_tokens=8)


@pytest.mark.parametrize("field, value, message", [
    ("verify", "always", "verify 'always' is unknown; accepted: off, duration, asr"),
    ("max_wer", 1.5, "max_wer must be"), ("duration_ratio", 1, "duration_ratio must be"),
    ("max_attempts", 0, "max_attempts must be"),
])
def test_bad_verify_options(tts, field, value, message):
    with pytest.raises(BadInput, match=message):
        tts.generate("hi", **{field: value})


def test_an_unknown_speech_recogniser_is_a_clear_error(hub_dir, tmp_path):
    tts = fastbark.Bark.from_pretrained(hub_dir, asr=tmp_path / "no-whisper-here")
    with pytest.raises(CheckpointError, match="cannot load the speech recogniser"):
        tts.generate("Hi there.", verify="asr", max_semantic_tokens=8)


def test_batch_manifest_and_server_record_the_checks(hub_dir, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "text": "Hi there.", "seed": 1, "verify": "duration",
                                "max_semantic_tokens": 200, "allow_early_stop": False}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(hub_dir), "-q"]) == 0
    record = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[-1])
    check = record["segments"][0]["check"]
    assert check["attempts"] == 3 and not check["passed"] and check["duration_ratio"] > 2.5
    import httpx
    from test_server import serving
    tts = fastbark.Bark.from_pretrained(hub_dir)
    with serving(tts, tmp_path) as (url, _):
        body = {"model": "tts-1", "input": "Hi there.", "response_format": "pcm", "seed": 1, "verify": "duration",
                "max_semantic_tokens": 40}
        got = httpx.post(url + "/v1/audio/speech", json=body, timeout=120)
        assert got.status_code == 200
        bad = httpx.post(url + "/v1/audio/speech", json={**body, "verify": "yes"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "verify"


def tiny_whisper(folder):
    """A random Whisper in the hub layout, written here: a byte-level vocabulary and special tokens, one layer
    each way. It transcribes nonsense, which is all the test needs: the path, end to end."""
    import json as json_
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for special in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json_.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
                           decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
                                               bos_token_id=eot, max_length=8, is_multilingual=False,
                                               no_timestamps_token_id=vocab["<|notimestamps|>"])
    model.save_pretrained(folder)
    return folder


@pytest.mark.filterwarnings("ignore")
def test_the_real_whisper_path_runs_end_to_end(hub_dir, tmp_path):
    tts = fastbark.Bark.from_pretrained(hub_dir, asr=tiny_whisper(tmp_path / "whisper"))
    out = tts.generate("Hi there.", seed=1, verify="asr", max_attempts=2, max_semantic_tokens=40,
                       allow_early_stop=False)
    check = out.segments[0].check
    assert isinstance(check.transcript, str) and check.wer is not None and 1 <= check.attempts <= 2
    assert check.passed == (check.wer <= 0.35 and 0.4 <= check.duration_ratio <= 2.5)
