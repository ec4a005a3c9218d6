"""The voices a server offers, by name: OpenAI's names (a table onto presets), the checkpoint's presets and
uploaded `.npz` voices. One catalogue for every front end (HTTP, Wyoming), so a name means the same voice
in both, and each lists the same voices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

# OpenAI's voice names, each onto a preset (`--voice-map` replaces or adds entries)
OPENAI_VOICES = {"alloy": "v2/en_speaker_6", "ash": "v2/en_speaker_1", "ballad": "v2/en_speaker_2",
                 "coral": "v2/en_speaker_9", "echo": "v2/en_speaker_3", "fable": "v2/en_speaker_4",
                 "onyx": "v2/en_speaker_0", "nova": "v2/en_speaker_9", "sage": "v2/en_speaker_5",
                 "shimmer": "v2/en_speaker_7", "verse": "v2/en_speaker_8"}
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # an uploaded voice's name (and file stem)
PRESET_LANGUAGE = re.compile(r"(?:^|/)([a-z]{2})_speaker_\d+$")  # Suno's presets: v2/de_speaker_3, en_speaker_0


def voice_language(preset: str) -> str | None:
    """The language of a Suno preset from its name (`v2/de_speaker_3` -> de); None when the name says none."""
    match = PRESET_LANGUAGE.search(preset)
    return match.group(1) if match else None


@dataclass(frozen=True)
class VoiceEntry:
    id: str  # the name a request gives
    kind: str  # openai (a table name), preset or uploaded
    preset: str | None  # what an OpenAI name stands for
    language: str | None

    def as_dict(self) -> dict:
        """Open WebUI's shape (id, name) with fastbark's fields beside it."""
        return {"id": self.id, "name": self.id, "kind": self.kind, "preset": self.preset, "language": self.language}


class VoiceCatalog:
    def __init__(self, presets: list[str], table: dict[str, str], uploads: Path | None):
        self.presets, self.table, self.uploads = list(presets), dict(table), uploads

    def uploaded(self) -> list[str]:
        return sorted(p.stem for p in self.uploads.glob("*.npz")) if self.uploads is not None else []

    def entries(self) -> list[VoiceEntry]:
        """Every voice a request may name: the table's (whose preset exists), the presets, the uploads."""
        table = [VoiceEntry(n, "openai", p, voice_language(p)) for n, p in self.table.items() if p in self.presets]
        presets = [VoiceEntry(n, "preset", None, voice_language(n)) for n in self.presets]
        return table + presets + [VoiceEntry(n, "uploaded", None, None) for n in self.uploaded()]

    def resolve(self, name) -> str | None:
        """A preset name or an uploaded file's path (strings: requests with the same voice share batches).
        The table and the checkpoint's presets come first: an upload never takes over their names."""
        if name is None:
            return None
        if not isinstance(name, str):
            raise BadInput(f"voice must be a string, got {type(name).__name__}", "voice")
        if name in self.table:
            if self.table[name] in self.presets:
                return self.table[name]
            raise BadInput(f"voice {name!r} stands for the preset {self.table[name]!r}, which this checkpoint does "
                           f"not have; give one of its presets, or map {name!r} to one with --voice-map (presets: "
                           f"{', '.join(self.presets) or 'none'})", "voice")
        if name in self.presets:
            return name
        if self.uploads is not None and VOICE_NAME.match(name) and (self.uploads / f"{name}.npz").is_file():
            return str(self.uploads / f"{name}.npz")
        known = sorted(set(self.presets) | set(self.table) | set(self.uploaded()))
        raise BadInput(f"unknown voice {name!r}; accepted: {', '.join(known)}", "voice")

    def upload_path(self, name: str) -> Path:
        """Where an upload named `name` goes; BadInput if it may not have that name."""
        if self.uploads is None:
            raise BadInput("this server keeps no uploaded voices: start it with --data-dir", "name")
        if not VOICE_NAME.match(name):
            raise BadInput("a voice name is 1-64 letters, digits, '_' or '-', starting with a letter or digit", "name")
        if name in self.table or name in self.presets:
            owner = "the voice table (OpenAI's names)" if name in self.table else "a preset of this checkpoint"
            raise BadInput(f"the voice name {name!r} belongs to {owner}; an upload cannot take it over: choose "
                           f"another name", "name", code="voice_name_taken")
        return self.uploads / f"{name}.npz"
