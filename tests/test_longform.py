"""Whole texts: splitting, one voice, batching that changes nothing, joins, segments, streaming, seeds."""

import base64
import io
import time

import numpy as np
import pytest
import soundfile as sf

from fastbark import BadInput
from fastbark.longform.joins import FRAME, fade_edges, join_piece, speech_bounds
from fastbark.cli import main
from fastbark.longform.narrate import derive_seed
from fastbark.longform.split import chunk_text, split_sentences

GREEDY = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None)
SHORT = dict(max_semantic_tokens=8, max_chunk_tokens=6)  # tiny chunks: a few words each
STORY = "The dog is cute. Hello world [laughs]. I a the dog. Café naïve, über señor. The world is cute."


def words(s: str) -> int:
    return len(s.split())


# ------------------------------------------------------------------ splitting


def test_sentences_keep_abbreviations_decimals_quotes_and_ellipses():
    text = 'Dr. Smith paid $3.50 for it. "Really?" she asked... Yes! Mr. Jones [laughs] agreed.'
    assert list(split_sentences(text)) == ["Dr. Smith paid $3.50 for it.", '"Really?" she asked...', "Yes!",
                                           "Mr. Jones [laughs] agreed."]


def test_chunks_pack_sentences_within_the_budget():
    text = "One two three. Four five. Six seven eight nine. Ten."
    assert chunk_text(text, words, max_tokens=5) == ["One two three. Four five.", "Six seven eight nine. Ten."]
    assert chunk_text(text, words, max_tokens=100) == [text]  # it all fits: one chunk, as given


def test_an_overlong_sentence_is_cut_at_clauses_then_words_never_inside_a_word():
    text = "alpha beta gamma, delta epsilon zeta eta theta iota, kappa lambda."
    chunks = chunk_text(text, words, max_tokens=4)
    assert chunks == ["alpha beta gamma,", "delta epsilon zeta eta", "theta iota, kappa lambda."]
    assert " ".join(chunks).split() == text.split()  # every word whole, in order


def test_cues_and_lyrics_stay_whole():
    text = "so many words here [clears throat] and more words ♪ la la ♪ and the end of it all"
    chunks = chunk_text(text, words, max_tokens=5)
    assert any("[clears throat]" in c for c in chunks) and any("♪ la la ♪" in c for c in chunks)


def test_one_word_longer_than_a_chunk_is_cut_inside_it_only():
    chunks = chunk_text("go " + "x" * 25 + " now.", len, max_tokens=10)
    assert chunks == ["go", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx now."]


def test_cjk():
    text = "你好世界。今天天气很好，我们去公园吧。"
    assert list(split_sentences(text, "zh")) == ["你好世界。", "今天天气很好，我们去公园吧。"]
    chunks = chunk_text(text, len, max_tokens=7, language="zh")
    assert chunks == ["你好世界。", "今天天气很好，", "我们去公园吧。"] and "".join(chunks) == text


def test_duration_budget(tts):
    text = " ".join(["word"] * 100) + "."
    chunks = chunk_text(text, lambda s: len(tts.tokenizer.encode(s)), max_seconds=5.0)
    assert len(chunks) > 5 and all(words(c) <= 5.0 * 2.7 for c in chunks)


def test_a_megabyte_of_text_splits_in_linear_time(tts):
    base = "Dr. Smith paid $3.50 for it. \"Really?\" she asked... Yes! The dog [laughs] agreed, and then said no. "
    text = base * (1_000_000 // len(base))
    start = time.perf_counter()
    chunks = chunk_text(text, lambda s: len(tts.tokenizer.encode(s)))
    assert time.perf_counter() - start < 120  # quadratic splitting would take hours here
    assert len(chunks) > 1000 and " ".join(chunks).split() == text.split()


# ------------------------------------------------------------------ joins


def test_trimming_fading_and_pauses():
    rng = np.random.default_rng(0)
    speech = (0.5 * rng.standard_normal(24_000)).astype(np.float32)
    audio = np.concatenate([np.zeros(4800, np.float32), speech, 1e-4 * np.ones(2400, np.float32)])
    start, end = speech_bounds(audio, -40)
    assert (start, end) == (4800, 4800 + 24_000)
    piece, a, b = join_piece(audio, first=False, trim=True, threshold_db=-40, fade_s=0.01, pause_s=0.5)
    assert a == 12_000 and b - a == 24_000 and len(piece) == b and not piece[:a].any()
    assert abs(piece[a]) < 0.01 * abs(speech[0]) + 1e-6 and abs(piece[-1]) < 0.01 * abs(speech[-1]) + 1e-6
    untrimmed, a, b = join_piece(audio, first=True, trim=False, threshold_db=-40, fade_s=0, pause_s=0.5)
    assert a == 0 and np.array_equal(untrimmed, audio)
    assert speech_bounds(np.zeros(10 * FRAME, np.float32), -40) == (0, 0)
    faded = fade_edges(np.ones(1000, np.float32), 100)
    assert faded[0] < 0.01 and faded[-1] < 0.01 and faded[500] == 1


# ------------------------------------------------------------------ narration


@pytest.mark.parametrize("voice", [None, "announcer"])
def test_one_voice_throughout(tts, monkeypatch, voice):
    calls = []
    original = tts.generate_chunks

    def spy(ids, voice_used, *args, **checks):
        calls.append((len(ids), voice_used))
        return original(ids, voice_used, *args, **checks)
    monkeypatch.setattr(tts, "generate_chunks", spy)
    out = tts.generate(STORY, voice=voice, seed=3, **SHORT)
    assert len(out.segments) >= 4 and [n for n, _ in calls] == [1, len(out.segments) - 1]  # first alone, rest batched
    (first,), rest = calls[0][1], calls[1][1]  # one voice per chunk
    assert all(v is rest[0] for v in rest), "every chunk after the first has one voice object"
    if voice is None:  # the first chunk's generation is the voice of the rest
        assert first is None
        np.testing.assert_array_equal(rest[0].semantic_prompt, out.segments[0].semantic_tokens)
    else:
        assert first is rest[0] is tts.load_voice("announcer")


def test_continue_speaker_conditions_each_chunk_on_the_one_before(tts, monkeypatch):
    calls = []
    original = tts.generate_chunks

    def spy(ids, voice_used, *args, **checks):
        calls.append(voice_used)
        return original(ids, voice_used, *args, **checks)
    monkeypatch.setattr(tts, "generate_chunks", spy)
    out = tts.generate(STORY, speaker="continue", seed=3, **SHORT)
    assert len(calls) == len(out.segments) >= 4
    for previous, voice in zip(out.segments, calls[1:]):
        np.testing.assert_array_equal(voice.semantic_prompt, previous.semantic_tokens)


@pytest.mark.parametrize("sampling", [GREEDY, dict(seed=5)])
def test_stream_equals_generate(tts, sampling):
    whole = tts.generate(STORY, **SHORT, **sampling)
    chunks = list(tts.stream(STORY, **SHORT, **sampling))
    assert len(chunks) == len(whole.segments) > 1
    assert [c.index for c in chunks] == list(range(len(chunks))) and chunks[0].total == len(chunks)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
    for chunk, segment in zip(chunks, whole.segments):
        assert (chunk.segment.text, chunk.segment.start, chunk.segment.end) == (segment.text, segment.start,
                                                                                segment.end)
        np.testing.assert_array_equal(chunk.segment.semantic_tokens, segment.semantic_tokens)


def test_chunked_equals_one_by_one(tts):
    """The batched run gives each chunk exactly what fastbark's own one-by-one loop gives it."""
    batched = tts.generate(STORY, voice="announcer", seed=9, **SHORT)
    one_by_one = tts.generate(STORY, voice="announcer", seed=9, batch_size=1, **SHORT)
    np.testing.assert_array_equal(batched.audio, one_by_one.audio)
    np.testing.assert_array_equal(batched.fine_tokens, one_by_one.fine_tokens)


def test_segments_match_the_audio(tts):
    out = tts.generate(STORY, pause=0.3, **SHORT, **GREEDY)
    seg = out.segments
    assert seg[0].start == 0 and seg[-1].end == pytest.approx(out.duration_s)
    for a, b in zip(seg, seg[1:]):
        assert b.start - a.end == pytest.approx(0.3)  # the pause
    assert " ".join(s.text for s in seg).split() == STORY.split()
    np.testing.assert_array_equal(out.semantic_tokens, np.concatenate([s.semantic_tokens for s in seg]))
    assert out.fine_tokens.shape[1] == out.coarse_tokens.shape[1]


def test_a_short_text_is_one_untouched_chunk(tts):
    out = tts.generate("the dog is cute", seed=1, max_semantic_tokens=20)
    assert len(out.segments) == 1 and out.segments[0].end == out.duration_s
    np.testing.assert_array_equal(out.audio, tts.decode(out.fine_tokens))  # no trimming, no fades


# ------------------------------------------------------------------ seeds


TEXTS = ["the dog is cute", "Hello world [laughs] ♪", "café naïve", "I a the"]


def assert_same(a, b):
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.fine_tokens, b.fine_tokens)
    np.testing.assert_array_equal(a.audio, b.audio)


def test_sampled_texts_are_the_same_alone_and_in_any_batch(tts):
    seeds = [11, 12, 13, 14]
    alone = [tts.generate(t, seed=s, max_semantic_tokens=30, min_eos_p=0.005) for t, s in zip(TEXTS, seeds)]
    for batch_size in (1, 3, 4):
        batch = tts.generate(TEXTS, seed=seeds, batch_size=batch_size, max_semantic_tokens=30, min_eos_p=0.005)
        for a, b in zip(alone, batch):
            assert_same(a, b)
    beside_others = tts.generate(["other words", TEXTS[2]], seed=[99, 13], max_semantic_tokens=30, min_eos_p=0.005)[1]
    assert_same(beside_others, alone[2])
    assert len({len(a.semantic_tokens) for a in alone}) > 1, "the texts must stop at different steps"


def test_one_seed_for_a_list_derives_one_per_text(tts):
    batch = tts.generate(TEXTS[:2], seed=7, max_semantic_tokens=20)
    for i, (text, out) in enumerate(zip(TEXTS, batch)):
        assert_same(out, tts.generate(text, seed=derive_seed(7, i), max_semantic_tokens=20))
    assert derive_seed(7, 0) != derive_seed(7, 1) != derive_seed(8, 0)


def test_bad_long_form_input(tts):
    with pytest.raises(BadInput, match="one seed per text"):
        tts.generate(TEXTS, seed=[1, 2])
    with pytest.raises(BadInput, match="language .* is unknown"):
        tts.generate("hi", language="xx")
    with pytest.raises(BadInput, match="pause"):
        tts.generate("hi", pause=-1)
    with pytest.raises(BadInput, match="unknown option"):
        tts.generate("hi", chunk_seconds=3)
    with pytest.raises(BadInput, match="string"):
        tts.stream(["a", "b"])
    with pytest.raises(BadInput, match="empty"):
        tts.stream("   \n ")


# ------------------------------------------------------------------ the command


def test_cli_streams_wav_to_stdout_and_writes_subtitles(hub_dir, tmp_path, capsysbinary):
    args = ["say", STORY, "--model", str(hub_dir), "--max-semantic-tokens", "8", "--max-chunk-tokens", "6",
            "--seed", "2", "-q", "--subtitles"]
    assert main([*args, str(tmp_path / "a.srt"), "-o", str(tmp_path / "a.wav")]) == 0
    capsysbinary.readouterr()
    assert main([*args, str(tmp_path / "b.vtt"), "-o", "-"]) == 0
    streamed = capsysbinary.readouterr().out
    assert streamed[:4] == b"RIFF" and streamed[36:40] == b"data"
    from_file, rate = sf.read(tmp_path / "a.wav", dtype="int16")
    np.testing.assert_array_equal(np.frombuffer(streamed[44:], "<i2"), from_file)  # the same samples
    srt = (tmp_path / "a.srt").read_text().split("\n\n")
    assert srt[0].startswith("1\n00:00:00,000 --> 00:00:0") and len(srt) >= 4
    assert (tmp_path / "b.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert main([*args, str(tmp_path / "c.txt"), "-o", str(tmp_path / "c.wav")]) == 2
    assert not (tmp_path / "c.wav").exists()


def test_cli_raw_pcm_to_stdout(hub_dir, capsysbinary):
    assert main(["say", "the dog", "--model", str(hub_dir), "--max-semantic-tokens", "5", "--seed", "0", "-q",
                 "-o", "-", "--format", "pcm"]) == 0
    raw = capsysbinary.readouterr().out
    assert len(raw) > 0 and len(raw) % 640 == 0 and raw[:4] != b"RIFF"
    assert sf.read(io.BytesIO(raw), format="RAW", samplerate=24_000, channels=1, subtype="PCM_16")[0].size > 0


# ------------------------------------------------------------------ linear splitting on hostile text (issue 23)

HOSTILE = {  # one long token, many separators, deep brackets, and their relatives
    "base64": lambda n: (base64.b64encode(bytes(range(256)) * (n // 192 + 1)).decode())[:n],
    "one letter": lambda n: "a" * n, "commas": lambda n: "," * n, "brackets": lambda n: "[" * n,
    "closed brackets": lambda n: "[a]" * (n // 3), "music": lambda n: "♪" * n, "dots": lambda n: ". " * (n // 2),
    "cjk": lambda n: "你" * n, "open cue": lambda n: "[" + "ab " * (n // 3),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_splitting_measures_each_character_a_bounded_number_of_times(tts, kind):
    """Counting the characters handed to the tokenizer makes the bound exact: quadratic splitting measures
    a text of n characters about n^2 / 2 times; ours at most ~ 2 log2(chunk) times each. Fails before
    issue 23 (base64: 700x, commas: 300x the length)."""
    measured = []

    def count(piece: str) -> int:
        measured.append(len(piece))
        return len(tts.tokenizer.encode(piece))
    for n in (4000, 16_000):
        measured.clear()
        text = HOSTILE[kind](n)
        chunks = chunk_text(text, count)
        assert sum(measured) <= 40 * len(text), (kind, n, sum(measured) / len(text))
        assert "".join(chunks).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added


def test_hostile_text_splits_in_linear_time(tts):
    start = time.perf_counter()
    for make in HOSTILE.values():  # 100,000 characters each: quadratic regexes or measuring would take minutes
        chunk_text(make(100_000), lambda s: len(tts.tokenizer.encode(s)))
    assert time.perf_counter() - start < 60


def test_every_chunk_of_hostile_text_fits(tts):
    count = lambda s: len(tts.tokenizer.encode(s))  # noqa: E731
    for make in HOSTILE.values():
        for chunk in chunk_text(make(5000), count, max_tokens=64, max_seconds=5):
            assert count(chunk) <= 64 and chunk.strip()


# ------------------------------------------------------------------ a short first chunk (first_chunk_seconds)

OPENING = ("Hello there, my old friend, how are you doing on this fine and sunny morning in the middle of the "
           "month? I am fine. The weather is lovely today and the birds are singing in the trees all around us.")


def test_the_first_chunk_is_short_and_cut_at_a_clause_or_sentence_never_a_word():
    from fastbark.longform.split import estimate_seconds
    plain = chunk_text(OPENING, words)
    for seconds in (2, 4, 6):
        chunks = chunk_text(OPENING, words, first_seconds=seconds)
        assert " ".join(chunks) == " ".join(OPENING.split())  # nothing lost, no word cut
        assert estimate_seconds(chunks[0]) <= seconds < estimate_seconds(plain[0])
        assert chunks[0].endswith(",") or chunks[0].endswith(".")  # at a clause or sentence boundary
    # whole sentences when they fit
    assert chunk_text("Short. Also short. And a third one, rather longer than the others by far.", words,
                      first_seconds=2) == ["Short. Also short.", "And a third one, rather longer than the others by far."]
    # a first clause longer than the limit is taken whole (never cut inside)
    long_clause = "This opening clause runs on for many words without any punctuation at all, then stops."
    assert chunk_text(long_clause, words, first_seconds=1)[0] == \
        "This opening clause runs on for many words without any punctuation at all,"
    assert chunk_text("今日は良い天気です、散歩に行きましょう。", len, first_seconds=1, language="ja")[0] == "今日は良い天気です、"


def test_first_chunk_seconds_in_generate_and_stream(tts):
    """The short first chunk is chunk 0 with the text's seed; the others follow the usual seed and voice rules;
    stream == generate."""
    options = dict(first_chunk_seconds=2, max_semantic_tokens=8, seed=4)
    whole = tts.generate(OPENING, **options)
    chunks = tts.split(OPENING, first_chunk_seconds=2)
    assert [s.text for s in whole.segments] == chunks and len(chunks) >= 2
    assert chunks[0] == "Hello there, my old friend,"
    first = tts.generate(chunks[0], seed=4, max_semantic_tokens=8)
    np.testing.assert_array_equal(whole.segments[0].semantic_tokens, first.semantic_tokens)
    streamed = np.concatenate([c.audio for c in tts.stream(OPENING, **options)])
    np.testing.assert_array_equal(streamed, whole.audio)
    assert tts.split(OPENING, first_chunk_seconds=0) == tts.split(OPENING)  # 0: off


@pytest.mark.parametrize("value", [0.5, 16, -1, "4"])
def test_bad_first_chunk_seconds(tts, value):
    with pytest.raises(BadInput, match="first_chunk_seconds must be a number of seconds in 1..15, 0"):
        tts.split(OPENING, first_chunk_seconds=value)
