"""Dialogue: a script of turns, each spoken in its speaker's voice, joined in order with a pause between turns.

A script is text with one `NAME: line` per turn (a line without a tag continues the turn before; blank
lines are skipped), or a list of `{"speaker": ..., "text": ...}`. Every turn is a text of its own for the
narration schedule (narrate.py): cut into chunks, every chunk in the speaker's voice, turns of every
speaker batched together as the engine allows, turn k seeded with `derive_seed(seed, k)` as the texts of a
list are. A speaker given no voice gets a preset of its own (the checkpoint's presets in order, those of the
script's language first, none given to another speaker), so it keeps one voice throughout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np

from ..constants import SAMPLE_RATE
from ..errors import BadInput
from ..options import shown
from ..results import AudioChunk
from .narrate import TextJob

TAG = re.compile(r"^\s*([^\W\d_][\w .'-]{0,39}?)\s*:\s*(.*)$")  # NAME: text (a name starts with a letter)
MAX_TURNS = 1000


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str


def parse_script(script) -> list[Turn]:
    """The turns of a script: text with `NAME: line` per turn, or a list of {"speaker", "text"} objects."""
    if isinstance(script, str):
        turns = _parse_text(script)
    elif isinstance(script, (list, tuple)):
        turns = [_parse_item(i, item) for i, item in enumerate(script)]
    else:
        raise BadInput(f"a dialogue script is text (NAME: line per turn) or a list of {{speaker, text}} objects, "
                       f"got {type(script).__name__}", "text")
    if not turns:
        raise BadInput("the dialogue script has no turns: give one NAME: line per turn", "text")
    if len(turns) > MAX_TURNS:
        raise BadInput(f"the dialogue script has {len(turns)} turns; at most {MAX_TURNS}", "text")
    return turns


def _parse_text(script: str) -> list[Turn]:
    turns: list[list] = []  # [speaker, lines, line number]
    for number, line in enumerate(script.splitlines(), 1):
        if not line.strip():
            continue
        tag = TAG.match(line)
        if tag:
            turns.append([tag.group(1).strip(), [tag.group(2).strip()], number])
        elif turns:
            turns[-1][1].append(line.strip())
        else:
            raise BadInput(f"line {number} of the dialogue script has no speaker: start each turn with NAME: "
                           f"(got {shown(line.strip())})", "text")
    result = []
    for speaker, lines, number in turns:
        text = " ".join(part for part in lines if part)
        if not text:
            raise BadInput(f"{speaker}'s turn on line {number} of the dialogue script has no text", "text")
        result.append(Turn(speaker, text))
    return result


def _parse_item(index: int, item) -> Turn:
    if not isinstance(item, dict) or set(item) - {"speaker", "text"}:
        raise BadInput(f"turn {index} of the dialogue script must be an object with speaker and text, got "
                       f"{shown(item)}", "text")
    speaker, text = item.get("speaker"), item.get("text")
    if not isinstance(speaker, str) or not speaker.strip():
        raise BadInput(f"turn {index} of the dialogue script has no speaker name", "text")
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"{speaker.strip()}'s turn {index} of the dialogue script has no text", "text")
    return Turn(speaker.strip(), " ".join(text.split()))


def check_speakers(turns: list[Turn], speakers: dict | None) -> list[str]:
    """The script's speakers, in order of appearance; with `speakers`, each must be in it, and it may name no
    one else (a typo is an error, not a silent extra voice)."""
    names = list(dict.fromkeys(t.speaker for t in turns))
    if speakers is None:
        return names
    if not isinstance(speakers, dict) or not all(isinstance(k, str) for k in speakers):
        raise BadInput("speakers must map each speaker's name to a voice (or to none)", "speakers")
    unknown = [n for n in names if n not in speakers]
    if unknown:
        raise BadInput(f"speaker {unknown[0]!r} of the script has no entry in speakers (which has "
                       f"{', '.join(map(repr, speakers)) or 'none'}): add it, with a voice or none", "speakers")
    absent = [n for n in speakers if n not in names]
    if absent:
        raise BadInput(f"speakers names {absent[0]!r}, who has no turn in the script (speakers: "
                       f"{', '.join(map(repr, names))})", "speakers")
    return names


def cast(turns: list[Turn], speakers: dict | None, presets: list[str], language: str) -> dict[str, object]:
    """Each speaker's voice: the one given in `speakers` (NAME -> voice, or None for one of its own), else a
    preset no other speaker has (the script's language first). With `speakers`, every speaker of the
    script must be in it, and it names no one else."""
    names = check_speakers(turns, speakers)
    given = dict(speakers or {})
    taken = {v for v in given.values() if isinstance(v, str)}
    free = [p for p in sorted(presets, key=lambda p: f"/{language}_" not in f"/{p}") if p not in taken]
    voices = {}
    for name in names:
        voice = given.get(name)
        if voice is None:
            if not free:
                raise BadInput(f"speaker {name!r} has no voice, and the checkpoint has no preset left to give it: "
                               f"give it one in speakers", "speakers")
            voice = free.pop(0)
        voices[name] = voice
    return voices


class TurnJoiner:
    """The turns' chunks as one narration: in turn order, `pause_s` of silence before each turn after the
    first, segments timed on the whole audio and named with their speaker, indices counted over the whole
    script. Chunks may arrive out of order (the schedule orders them only within a turn); `add` returns
    those now ready. `Bark.stream_dialogue` and the server both join through it."""

    def __init__(self, jobs: list[TextJob], turns: list[Turn], pause_s: float):
        self.jobs, self.turns = jobs, turns
        self.total = sum(len(job.chunks) for job in jobs)
        self.pause = np.zeros(int(round(pause_s * SAMPLE_RATE)), np.float32)
        self.pending: dict[tuple[int, int], AudioChunk] = {}
        self.turn = self.chunk = self.emitted = self.offset = self.turn_start = 0  # next (turn, chunk); samples

    def add(self, turn: int, item: AudioChunk) -> list[AudioChunk]:
        self.pending[(turn, item.index)] = item
        ready = []
        while (self.turn, self.chunk) in self.pending:
            item = self.pending.pop((self.turn, self.chunk))
            audio = item.audio
            if self.chunk == 0:
                if self.turn > 0:
                    audio = np.concatenate([self.pause, audio])
                self.turn_start = self.offset + (len(self.pause) if self.turn > 0 else 0)
            start = self.turn_start / SAMPLE_RATE
            segment = replace(item.segment, start=item.segment.start + start, end=item.segment.end + start,
                              speaker=self.turns[self.turn].speaker)
            ready.append(AudioChunk(audio, segment, self.emitted, self.total, item.generation))
            self.offset += len(audio)
            self.emitted += 1
            self.chunk += 1
            if self.chunk == len(self.jobs[self.turn].chunks):
                self.turn, self.chunk = self.turn + 1, 0
        return ready


def in_order(items: Iterable[tuple[int, AudioChunk]], jobs: list[TextJob], turns: list[Turn],
             pause_s: float) -> Iterator[AudioChunk]:
    """(turn, chunk) items of the schedule, joined as one narration (TurnJoiner)."""
    joiner = TurnJoiner(jobs, turns, pause_s)
    for turn, item in items:
        yield from joiner.add(turn, item)
