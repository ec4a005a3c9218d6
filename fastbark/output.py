"""Writing audio: formats, checks made before any generation, and incremental, all-or-nothing files.

Encoding is libsndfile's (through `soundfile`): WAV, FLAC, Ogg Vorbis, Ogg Opus and MP3; AAC (in ADTS
frames) is FFmpeg's encoder through PyAV. `pcm` is raw 16-bit little-endian mono at 24 kHz, no header.
A file is written under a temporary name beside its target and renamed only when complete, so a
failure never leaves a half-written file under the user's name. Standard output (`-`) streams WAV (with
a header that declares an open length) and PCM chunk by chunk; other formats are encoded whole, then
written.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .constants import SAMPLE_RATE
from .errors import BadInput

PCM16_FORMATS = ("wav", "flac", "pcm")  # written from pcm16()'s samples, so a file and a stream hold the same ones
FORMATS = {  # name -> (libsndfile major format, subtype); the file extension is the name
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "pcm": None,  # raw int16 little-endian, no header
    "aac": None,  # ADTS, through PyAV (FFmpeg's encoder); encoded whole
}
WHOLE = ("aac",)  # formats encoded whole, at the end, even into a file
STREAMED = ("wav", "pcm")  # the formats written to standard output chunk by chunk
MAX_WAV_BYTES = 0xFFFF_FFFF  # a RIFF size field is 32 bits: a streamed header declares this (unknown length)
_UMASK = os.umask(0)  # read once (the only way is to set it), so that finished files get the usual permissions
os.umask(_UMASK)


def output_format(path: str, format: str | None = None) -> str:
    """The format for `path` ('-' is standard output): `format` (any case) if given, else from the extension.
    A format that contradicts a known extension (`x.wav` as mp3) is refused: the bytes would lie about
    their name."""
    ext = "" if path == "-" else Path(path).suffix.lower().lstrip(".")
    if format is not None:
        fmt = format.lower() if isinstance(format, str) else format
        if fmt not in FORMATS:
            raise BadInput(f"format {format!r} is unknown; accepted: {', '.join(FORMATS)}", "format")
        if ext in FORMATS and ext != fmt and (ext, fmt) != ("ogg", "opus"):  # Opus lives in an Ogg file
            raise BadInput(f"the output {path!r} is named .{ext} but the format is {fmt}: name it .{fmt}, or "
                           f"leave the format out", "format")
        return fmt
    if path == "-":
        return "wav"
    if ext not in FORMATS:
        raise BadInput(f"cannot tell the audio format of {path!r} from its extension; use one of "
                       f"{', '.join('.' + f for f in FORMATS)} (or --format)", "output")
    return ext


def check_folder(folder: Path, what: str = "folder") -> None:
    """Fail now if no file can be made in `folder`, whatever the permission bits say (a read-only file
    system, root in /proc, an ACL): a file is created there and removed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastbark-probe.", dir=folder)
    except OSError as e:
        raise BadInput(f"cannot write into the {what} {str(folder)!r}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, before any generation, if `path` cannot be written as a new or replaced file."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise BadInput(f"the {what} path must be a file path, got {path!r}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise BadInput(f"the {what} {str(path)!r} is a folder; give a file name inside it")
    parent = target.parent
    if not parent.is_dir():
        raise BadInput(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise BadInput(f"cannot write the {what} {str(path)!r}: permission denied")
    check_folder(parent, f"folder of the {what}")
    return target


def check_stdout() -> None:
    """Standard output can take audio: it is open, and not a terminal (binary noise there helps no one)."""
    stream = sys.stdout
    if stream is None or getattr(stream, "closed", False):
        raise BadInput("standard output is closed; give a file with -o FILE", "output")
    if stream.isatty():
        raise BadInput("will not write binary audio to a terminal: redirect it (-o - > out.wav), pipe it into a "
                       "player, or give -o FILE", "output")


def check_output(path: str, format: str | None = None) -> str:
    """Check an audio output before generating: its format, and that it can be written. Returns the format."""
    if path == "-":
        check_stdout()
    else:
        check_writable(path)
    return output_format(path, format)


def wav_header(sample_rate: int = SAMPLE_RATE, n_samples: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; without `n_samples` it declares the largest length (streaming)."""
    data = MAX_WAV_BYTES - 36 if n_samples is None else 2 * n_samples
    return b"RIFF" + struct.pack("<I", min(36 + data, MAX_WAV_BYTES)) + b"WAVE" + b"fmt " + \
        struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data)


def pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> 16-bit little-endian PCM, as libsndfile converts (clip, scale by 32767, round)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def encode(audio: np.ndarray, format: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """One whole clip as the bytes of a file in `format`."""
    if format == "pcm":
        return pcm16(audio)
    if format == "aac":
        return encode_aac(audio, sample_rate)
    import soundfile as sf
    buffer = io.BytesIO()
    major, subtype = FORMATS[format]
    sf.write(buffer, as_samples(audio, format), sample_rate, format=major, subtype=subtype)
    return buffer.getvalue()


def encode_aac(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """AAC in ADTS frames, through FFmpeg's encoder (PyAV)."""
    try:
        import av
    except ImportError:
        raise BadInput("the aac format needs PyAV: pip install av") from None
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        size = stream.codec_context.frame_size or 1024
        samples = np.asarray(audio, dtype=np.float32)
        for start in range(0, len(samples), size):
            frame = av.AudioFrame.from_ndarray(samples[None, start: start + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def as_samples(audio: np.ndarray, format: str) -> np.ndarray:
    """What libsndfile is given: int16 samples for the 16-bit formats (our rounding), else float32."""
    if format in PCM16_FORMATS:
        return np.frombuffer(pcm16(audio), "<i2")
    return np.asarray(audio, dtype=np.float32)


class AudioWriter:
    """Writes a clip chunk by chunk to `path` ('-': standard output) in `format`; `close()` completes it.

    For a file, chunks go to a temporary file beside it (libsndfile encodes as they come, so memory
    stays bounded; AAC is encoded whole at the end), renamed into place by `close()`; `abort()` (or
    leaving a `with` block on an exception, Ctrl-C and SIGTERM included) removes it and leaves any
    existing file untouched.
    """

    def __init__(self, path: str, format: str | None = None, sample_rate: int = SAMPLE_RATE,
                 stdout: BinaryIO | None = None):
        if stdout is None:
            self.format = check_output(path, format)
        else:
            self.format = output_format(path, format)
        self.sample_rate, self.path = sample_rate, path
        self.n_samples = 0
        self._tmp = self._file = self._raw = self._stream = None
        self._buffer: list[np.ndarray] | None = None  # chunks of a clip encoded whole, at close()
        if path == "-":
            self._stream = stdout or sys.stdout.buffer
            if self.format == "wav":
                self._stream.write(wav_header(sample_rate))
            if self.format not in STREAMED:
                self._buffer = []
            return
        self._target = check_writable(path)
        fd, self._tmp = _temp_beside(self._target)
        try:  # until __init__ returns no `with` block can remove the temporary file: a signal here must
            if self.format == "pcm" or self.format in WHOLE:
                self._raw = os.fdopen(fd, "wb")
                self._buffer = [] if self.format in WHOLE else None
            else:
                os.close(fd)
                import soundfile as sf
                major, subtype = FORMATS[self.format]
                self._file = sf.SoundFile(self._tmp, "w", sample_rate, 1, subtype=subtype, format=major)
        except BaseException:  # SIGTERM (Terminated), Ctrl-C, or a failure to open
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, dtype=np.float32)
        self.n_samples += len(audio)
        if self._buffer is not None:
            self._buffer.append(audio)
        elif self._file is not None:
            self._file.write(as_samples(audio, self.format))
        elif self._raw is not None:
            self._raw.write(pcm16(audio))
        else:
            self._stream.write(pcm16(audio))
            self._stream.flush()

    def close(self) -> None:
        if self._buffer is not None:
            data = encode(np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32), self.format,
                          self.sample_rate)
            (self._raw or self._stream).write(data)
            self._buffer = None
        if self._file is not None:
            self._file.close()
        if self._raw is not None:
            self._raw.close()
        if self._tmp is not None:
            _commit(self._tmp, self._target)
            self._tmp = None
        if self._stream is not None:
            self._stream.flush()

    def abort(self) -> None:
        for handle in (self._file, self._raw):
            if handle is not None:
                handle.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_audio(path: str, audio: np.ndarray, format: str | None = None, sample_rate: int = SAMPLE_RATE) -> str:
    """Write one clip, all or nothing. Returns the format used."""
    with AudioWriter(path, format, sample_rate) as writer:
        writer.write(audio)
    return writer.format


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call `write(file object)` on a temporary file beside `path`, then rename it into place."""
    target = check_writable(path)
    fd, tmp = _temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        _commit(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temp_beside(target: Path) -> tuple[int, Path]:
    """A new hidden temporary file in the target's folder (so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    return fd, Path(tmp)


def _commit(tmp: Path, target: Path) -> None:
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, target)
