"""Dialogue scripts (longform/dialogue.py): every turn in its speaker's voice, pauses between turns, speakers
in segments and subtitles, stream == generate, bad scripts refused; the CLI and the server."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

import fastbark
from fastbark import BadInput
from fastbark.cli import main
from fastbark.longform.dialogue import parse_script
from fastbark.longform.narrate import derive_seed
from fastbark.longform.subtitles import render

FAST = dict(max_semantic_tokens=8)
SCRIPT = """ALICE: Hello Bob, how are you today?
BOB: I am fine.
It is a lovely day.

ALICE: Indeed it is."""
TURNS = [("ALICE", "Hello Bob, how are you today?"), ("BOB", "I am fine. It is a lovely day."),
         ("ALICE", "Indeed it is.")]


def test_scripts_parse_as_text_or_a_list():
    assert [(t.speaker, t.text) for t in parse_script(SCRIPT)] == TURNS
    as_list = [{"speaker": s, "text": t} for s, t in TURNS]
    assert [(t.speaker, t.text) for t in parse_script(as_list)] == TURNS
    assert parse_script("Dr. Who: time: and space")[0].speaker == "Dr. Who"  # the first colon ends the name


def test_each_turn_is_its_speakers_alone_generation(tts):
    speakers = {"ALICE": "announcer", "BOB": "v2/en_speaker_1"}
    out = tts.dialogue(SCRIPT, speakers, seed=3, **FAST)
    assert [(s.speaker, s.text) for s in out.segments] == TURNS
    for k, (speaker, text) in enumerate(TURNS):
        alone = tts.generate(text, voice=speakers[speaker], seed=derive_seed(3, k), **FAST)
        np.testing.assert_array_equal(out.segments[k].semantic_tokens, alone.semantic_tokens)


def test_speakers_without_a_voice_get_one_of_their_own_throughout(tts):
    out = tts.dialogue(SCRIPT, seed=5, **FAST)  # no voices: each speaker a preset no one else has
    assert tts.voices() == ["announcer", "v2/en_speaker_1"]
    presets = ["v2/en_speaker_1", "announcer"]  # the script's language (en) first, then the others in order
    alice = [tts.generate(TURNS[k][1], voice=presets[0], seed=derive_seed(5, k), **FAST) for k in (0, 2)]
    bob = tts.generate(TURNS[1][1], voice=presets[1], seed=derive_seed(5, 1), **FAST)
    for segment, want in zip([out.segments[0], out.segments[2], out.segments[1]], alice + [bob]):
        np.testing.assert_array_equal(segment.semantic_tokens, want.semantic_tokens)
    partly = tts.dialogue(SCRIPT, {"ALICE": presets[0], "BOB": None}, seed=5, **FAST)  # BOB: the preset left
    np.testing.assert_array_equal(partly.audio, out.audio)


def test_pauses_segments_subtitles_and_stream(tts):
    out = tts.dialogue(SCRIPT, seed=1, turn_pause=0.75, **FAST)
    starts = [s.start for s in out.segments]
    ends = [s.end for s in out.segments]
    for k in (1, 2):
        assert starts[k] - ends[k - 1] == pytest.approx(0.75, abs=1e-3)
    assert len(out.audio) / 24_000 == pytest.approx(ends[-1], abs=1e-3)
    streamed = list(tts.stream_dialogue(SCRIPT, seed=1, turn_pause=0.75, **FAST))
    assert [c.index for c in streamed] == [0, 1, 2] and all(c.total == 3 for c in streamed)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in streamed]), out.audio)
    vtt, srt = render(out.segments, "vtt"), render(out.segments, "srt")
    assert "<v ALICE>Hello Bob, how are you today?" in vtt and "<v BOB>I am fine." in vtt
    assert "BOB: I am fine. It is a lovely day." in srt


def test_a_long_turn_is_chunked_in_its_speakers_voice(tts):
    long_turn = "BOB: " + " ".join(["The dog is cute."] * 6) + "\nALICE: Yes."
    out = tts.dialogue(long_turn, {"BOB": "announcer", "ALICE": None}, seed=2, max_chunk_tokens=8, **FAST)
    assert [s.speaker for s in out.segments][-1] == "ALICE" and len(out.segments) > 2
    assert {s.speaker for s in out.segments[:-1]} == {"BOB"}
    bob = tts.generate(" ".join(["The dog is cute."] * 6), voice="announcer", seed=derive_seed(2, 0),
                       max_chunk_tokens=8, **FAST)
    for got, want in zip(out.segments[:-1], bob.segments):
        np.testing.assert_array_equal(got.semantic_tokens, want.semantic_tokens)


@pytest.mark.parametrize("script, speakers, message", [
    ("Hello there", None, "line 1 of the dialogue script has no speaker"),
    ("ALICE: hi\nBOB:", None, "BOB's turn on line 2 of the dialogue script has no text"),
    ("ALICE: hi\nBOB: yo", {"ALICE": None}, "speaker 'BOB' of the script has no entry in speakers"),
    ("ALICE: hi", {"ALICE": None, "CAROL": None}, "speakers names 'CAROL', who has no turn"),
    ("ALICE: hi", {"ALICE": "nobody"}, "nobody"),
    ([{"speaker": "A"}], None, "A's turn 0 of the dialogue script has no text"),
    ([{"speaker": "", "text": "x"}], None, "turn 0 of the dialogue script has no speaker name"),
    (["just text"], None, "turn 0 of the dialogue script must be an object with speaker and text"),
    ("", None, "the dialogue script has no turns"),
    (5, None, "a dialogue script is text"),
    ("A: a\nB: b\nC: c", None, "speaker 'C' has no voice, and the checkpoint has no preset left"),
])
def test_bad_scripts(tts, script, speakers, message):
    with pytest.raises(BadInput, match=message):
        tts.dialogue(script, speakers, **FAST)


def test_cli_dialogue(hub_dir, tmp_path, capsys):
    script = tmp_path / "script.txt"
    script.write_text(SCRIPT)
    out, subs = tmp_path / "d.wav", tmp_path / "d.vtt"
    assert main(["say", "--file", str(script), "--model", str(hub_dir), "--voice-for", "BOB=announcer",
                 "--seed", "3", "--max-semantic-tokens", "8", "-q", "-o", str(out), "--subtitles", str(subs)]) == 0
    tts = fastbark.Bark.from_pretrained(hub_dir)
    want = tts.dialogue(SCRIPT, {"BOB": "announcer", "ALICE": None}, seed=3, **FAST)
    audio, rate = sf.read(out, dtype="int16")
    assert rate == 24_000 and len(audio) == len(want.audio)
    assert "<v BOB>" in subs.read_text()
    as_json = tmp_path / "script.json"
    as_json.write_text(json.dumps([{"speaker": s, "text": t} for s, t in TURNS]))
    assert main(["say", "--file", str(as_json), "--model", str(hub_dir), "--dialogue", "--seed", "3",
                 "--max-semantic-tokens", "8", "-q", "-o", str(tmp_path / "j.wav")]) == 0
    capsys.readouterr()
    assert main(["say", "ALICE: hi", "--voice-for", "ALICE", "-o", str(tmp_path / "x.wav")]) == 2
    assert "--voice-for takes NAME=VOICE" in capsys.readouterr().err
    assert main(["say", "no tag here", "--dialogue", "-o", str(tmp_path / "x.wav")]) == 2
    assert "line 1 of the dialogue script has no speaker" in capsys.readouterr().err
    assert main(["say", "A: hi", "--dialogue", "--voice", "announcer", "-o", str(tmp_path / "x.wav")]) == 2
    assert "--voice-for" in capsys.readouterr().err


def test_server_dialogue(hub_dir, tmp_path):
    from test_server import serving
    tts = fastbark.Bark.from_pretrained(hub_dir)
    with serving(tts, tmp_path) as (url, _):
        body = {"model": "tts-1", "input": SCRIPT, "response_format": "wav", "seed": 3, "turn_pause": 0.3,
                "speakers": {"ALICE": "announcer", "BOB": None}, **FAST}
        r = httpx.post(url + "/v1/audio/speech", json=body, timeout=120)
        assert r.status_code == 200
        audio, _ = sf.read(io.BytesIO(r.content), dtype="float32")
        want = tts.dialogue(SCRIPT, {"ALICE": "announcer", "BOB": None}, seed=3, turn_pause=0.3,
                            first_chunk_seconds=4, **FAST)
        assert len(audio) == len(want.audio)
        events = [json.loads(line[6:]) for line in httpx.post(url + "/v1/audio/speech", json={
            **body, "stream_format": "sse"}, timeout=120).text.splitlines() if line.startswith("data: ")]
        sse = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
        assert sse.count(b"RIFF") == 1 and sse[44:] == r.content[44:]  # one WAV: one header, then every turn
        bad = httpx.post(url + "/v1/audio/speech", json={**body, "speakers": {"ALICE": "nobody", "BOB": None}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "speakers"
        bad = httpx.post(url + "/v1/audio/speech", json={**body, "voice": "announcer"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "voice"
        bad = httpx.post(url + "/v1/audio/speech", json={**body, "input": "no speaker"})
        assert bad.status_code == 400 and "no speaker" in bad.json()["error"]["message"]


def test_batch_items_can_be_dialogues(hub_dir, tmp_path):
    """A batch item with `speakers` is a dialogue script (alone in its batch); JSON Lines and CSV; its
    manifest segments name the speakers; bad scripts are refused item by item."""
    jobs = tmp_path / "jobs.jsonl"
    items = [{"id": "talk", "text": SCRIPT, "speakers": {"ALICE": "announcer", "BOB": None}, "seed": 3,
              "turn_pause": 0.3, **FAST},
             {"id": "plain", "text": "the dog is cute", "seed": 1, **FAST},
             {"id": "bad", "text": "no speaker here", "speakers": {}},
             {"id": "typo", "text": SCRIPT, "speakers": {"ALICE": None, "BOB": None, "BOBB": None}},
             {"id": "both", "text": SCRIPT, "speakers": {"ALICE": None, "BOB": None}, "voice": "announcer"}]
    jobs.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(hub_dir), "-q"]) == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    by_id = {r.get("id") or r.get("given_id"): r for r in records}
    assert by_id["talk"]["status"] == "ok" and by_id["plain"]["status"] == "ok"
    assert [s["speaker"] for s in by_id["talk"]["segments"]] == ["ALICE", "BOB", "ALICE"]
    tts = fastbark.Bark.from_pretrained(hub_dir)
    want = tts.dialogue(SCRIPT, {"ALICE": "announcer", "BOB": None}, seed=3, turn_pause=0.3, **FAST)
    audio, _ = sf.read(tmp_path / "out" / "talk.wav", dtype="int16")
    assert len(audio) == len(want.audio)
    assert "has no speaker" in by_id["bad"]["error"] and "BOBB" in by_id["typo"]["error"]
    assert "voice gives one voice" in by_id["both"]["error"]
    csv_jobs = tmp_path / "jobs.csv"
    csv_jobs.write_text('id,text,speakers,seed,max_semantic_tokens\n'
                        f'c1,"{SCRIPT}","{{""ALICE"": ""announcer"", ""BOB"": null}}",3,8\n')
    assert main(["batch", str(csv_jobs), "--out", str(tmp_path / "csv"), "--model", str(hub_dir), "-q"]) == 0
    audio, _ = sf.read(tmp_path / "csv" / "c1.wav", dtype="int16")
    assert len(audio) == len(tts.dialogue(SCRIPT, {"ALICE": "announcer", "BOB": None}, seed=3, **FAST).audio)
