"""Subtitles from a narration's segments: SubRip (.srt) or WebVTT (.vtt)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import BadInput
from ..output import check_writable, write_atomically
from ..results import Segment

FORMATS = ("srt", "vtt")


def subtitle_format(path: str | os.PathLike) -> str:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise BadInput(f"subtitles are written as .srt or .vtt, not {str(path)!r}")
    check_writable(path, "subtitles file")
    return fmt


def _stamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def _spoken(segment: Segment, fmt: str) -> str:
    """A cue's text, with its speaker (a dialogue's): WebVTT's voice tag, or `NAME: ` in SubRip."""
    if segment.speaker is None:
        return segment.text
    return f"<v {segment.speaker}>{segment.text}" if fmt == "vtt" else f"{segment.speaker}: {segment.text}"


def render(segments: Iterable[Segment], fmt: str) -> str:
    sep = "," if fmt == "srt" else "."
    cues = [f"{_stamp(s.start, sep)} --> {_stamp(s.end, sep)}\n{_spoken(s, fmt)}\n" for s in segments]
    if fmt == "srt":
        return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
    return "WEBVTT\n\n" + "\n".join(cues)


def write_subtitles(path: str | os.PathLike, segments: Iterable[Segment]) -> None:
    text = render(segments, subtitle_format(path))
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
