"""A recording in, as one mono float32 clip: from a file (anything libsndfile or FFmpeg through PyAV reads:
wav, flac, ogg, mp3, m4a, webm ...), its bytes, or an array; resampled with soxr; checked.

Only the end of a recording is read: Bark's prompts keep the last ~5-7 s of a voice, so a clip longer than
MAX_CLIP_SECONDS is cut to its last MAX_CLIP_SECONDS (with a warning), and a long file is read from there
on (soundfile seeks to the frame, PyAV to the nearest key frame before it), so a 2-hour file costs what
a 15-second one does. Too short, silent, clipped or out-of-range audio, or something that is not audio,
is a BadInput that says so.
"""

from __future__ import annotations

import collections
import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..constants import COARSE_RATE_HZ, FINE_STRIDE
from ..errors import BadInput

# Bark keeps at most FINE_STRIDE (512) fine frames of a voice, 512 / 75 = 6.8 s, the longest any stage uses
# (semantic: 256 tokens = 5.1 s; coarse: ~4.2 s). The tools recommend 5-15 s: the rest of a 15 s clip is
# context for HuBERT's attention and the quantizer's LSTM, which read the whole clip.
PROMPT_SECONDS = FINE_STRIDE / COARSE_RATE_HZ
MAX_CLIP_SECONDS = 15.0
MIN_CLIP_SECONDS = 1.0  # Bark checks that coarse / semantic frames is ~1.5, which fails under ~0.75 s
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 384_000
MAX_AUDIO_BYTES = 64 << 20  # an uploaded clip: 15 s of 96 kHz 32-bit stereo WAV is 11.5 MB
SILENT_RMS = 1e-3  # -60 dBFS
FULL_SCALE = 0.999  # a sample this close to +-1 sits at the converter's limit
MAX_CLIPPED_FRACTION = 0.01  # speech with 1% of its samples at full scale has been clipped


@dataclass(frozen=True)
class Clip:
    """A recording's last part, mono float32 in [-1, 1]."""

    samples: np.ndarray  # (T,)
    sample_rate: int
    total_seconds: float  # the whole recording's length (the clip may be its end)
    name: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def resampled(self, rate: int) -> np.ndarray:
        """(T * rate / sample_rate,) float32, by soxr (its high-quality default)."""
        if rate == self.sample_rate:
            return self.samples
        try:
            import soxr
        except ImportError:
            raise BadInput("voices from recordings need the clone extra: pip install 'fastbark[clone]' (soxr is "
                           "missing)") from None
        return soxr.resample(self.samples, self.sample_rate, rate).astype(np.float32, copy=False)


def read_clip(audio, sample_rate: int | None = None, *, name: str | None = None) -> Clip:
    """A path, the bytes of an audio file, or an array ((T,), or (T, C) / (C, T) with C <= 8 channels;
    float in [-1, 1] or integer PCM) with its `sample_rate`. Raises BadInput for anything unusable."""
    if isinstance(audio, (str, os.PathLike)):
        name = name or os.fspath(audio)
        if not os.path.isfile(audio):
            raise BadInput(f"audio file {name!r} does not exist", "audio")
        if sample_rate is not None:
            raise BadInput("sample_rate is for arrays; an audio file says its own", "sample_rate")
        samples, rate, total = _read_file(os.fspath(audio), name)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        name = name or "the uploaded audio"
        if len(audio) > MAX_AUDIO_BYTES:
            raise BadInput(f"{name} is {len(audio) >> 20} MB; at most {MAX_AUDIO_BYTES >> 20} MB is accepted "
                           f"(a voice needs 5-15 s)", "audio")
        samples, rate, total = _read_file(io.BytesIO(bytes(audio)), name)
    else:
        name = name or "the audio array"
        samples, rate = _from_array(audio, sample_rate, name)
        total = len(samples) / rate
        samples = samples[-int(MAX_CLIP_SECONDS * rate):]
    if total > MAX_CLIP_SECONDS + 0.5:
        warnings.warn(f"{name} is {total:.1f} s long; its last {MAX_CLIP_SECONDS:.0f} s are used (Bark's prompts "
                      f"keep the last {PROMPT_SECONDS:.1f} s of a voice)", stacklevel=2)
    return _checked(Clip(np.ascontiguousarray(samples, dtype=np.float32), rate, total, name))


def _from_array(audio, sample_rate, name: str) -> tuple[np.ndarray, int]:
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().cpu().numpy()
    try:
        array = np.asarray(audio)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.dtype.kind not in "fiu" or array.ndim not in (1, 2) or array.size == 0:
        raise BadInput(f"{name} must be a path, the bytes of an audio file, or a non-empty 1-D (samples) or "
                       f"2-D (samples x channels) array of numbers; got {type(audio).__name__} "
                       f"{getattr(array, 'shape', '')}", "audio")
    if sample_rate is None:
        raise BadInput(f"{name} is an array: give its sample_rate too", "sample_rate")
    _check_rate(sample_rate, name)
    if array.ndim == 2:
        if array.shape[1] > 8 and array.shape[0] <= 8:
            array = array.T  # (C, T) -> (T, C)
        if array.shape[1] > 8:
            raise BadInput(f"{name} has shape {array.shape}: which axis is channels? Give (samples, channels) with "
                           f"at most 8 channels", "audio")
    array = _pcm_to_float(array)
    return (array.mean(axis=1) if array.ndim == 2 else array), int(sample_rate)


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """float32; integer PCM scaled so that its type's range is [-1, 1) (unsigned types centred first)."""
    if array.dtype.kind not in "iu":
        return array.astype(np.float32)
    info = np.iinfo(array.dtype)
    return ((array.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)) \
        .astype(np.float32)


def _check_rate(rate, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or \
            not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadInput(f"{name}: sample rate {rate!r} is not accepted; an integer from {MIN_SAMPLE_RATE} to "
                       f"{MAX_SAMPLE_RATE} Hz", "sample_rate")


def _read_file(source, name: str) -> tuple[np.ndarray, int, float]:
    """(mono samples of the last MAX_CLIP_SECONDS, sample rate, the whole file's seconds)."""
    import soundfile as sf
    try:
        with sf.SoundFile(source) as f:
            rate, frames = f.samplerate, f.frames
            _check_rate(rate, name)
            keep = int(MAX_CLIP_SECONDS * rate)
            if frames > keep:
                f.seek(frames - keep)
            data = f.read(dtype="float32", always_2d=True)  # (T, C)
        return data.mean(axis=1), rate, frames / rate
    except sf.LibsndfileError:
        pass  # not a format libsndfile reads (m4a, webm, some mp3s): FFmpeg's turn
    if hasattr(source, "seek"):
        source.seek(0)
    return _read_with_av(source, name)


def _read_with_av(source, name: str) -> tuple[np.ndarray, int, float]:
    import av
    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, ValueError, OSError):
        raise BadInput(f"{name} is not audio that libsndfile or FFmpeg can read (wav, flac, ogg, mp3, m4a, "
                       f"webm ...)", "audio") from None
    with container:
        if not container.streams.audio:
            raise BadInput(f"{name} has no audio stream", "audio")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        _check_rate(rate, name)
        keep = int(MAX_CLIP_SECONDS * rate)
        duration = container.duration / 1e6 if container.duration else None  # AV_TIME_BASE is microseconds
        if duration is not None and duration > MAX_CLIP_SECONDS + 2:
            try:  # to the key frame before the last part: decoding time stays bounded
                container.seek(int((duration - MAX_CLIP_SECONDS - 1) * 1e6), backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0)
        tail: collections.deque = collections.deque()
        held, decoded = 0, 0
        try:
            for frame in container.decode(stream):
                raw = frame.to_ndarray()  # (C, n) planar, or (1, n * C) packed
                if not frame.format.is_planar:
                    raw = raw.reshape(-1, len(frame.layout.channels)).T  # (1, n * C) -> (n, C) -> (C, n)
                block = _pcm_to_float(raw)
                tail.append(block.mean(axis=0))  # (C, n) -> (n,)
                held += tail[-1].size
                decoded += tail[-1].size
                while held - tail[0].size >= keep:
                    held -= tail.popleft().size
        except av.FFmpegError as e:
            if not tail:
                raise BadInput(f"{name} could not be decoded: {e}", "audio") from None
    if not tail:
        raise BadInput(f"{name} holds no audio samples", "audio")
    samples = np.concatenate(list(tail))[-keep:]
    return samples, rate, max(duration or 0.0, decoded / rate)


def _checked(clip: Clip) -> Clip:
    x, name = clip.samples, clip.name
    if not np.isfinite(x).all():
        raise BadInput(f"{name} holds NaN or infinite samples", "audio")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 1.0 + 1e-4:
        raise BadInput(f"{name} has samples up to {peak:.3g}; float audio must lie in [-1, 1] (integer PCM "
                       f"arrays are scaled by their type)", "audio")
    if clip.seconds < MIN_CLIP_SECONDS:
        raise BadInput(f"{name} is {clip.seconds:.2f} s long; a voice needs at least {MIN_CLIP_SECONDS:.0f} s of "
                       f"speech (5-15 s of one speaker works best)", "audio")
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))
    if rms < SILENT_RMS:
        level = f"{20 * math.log10(rms):.0f} dBFS" if rms > 0 else "all zeros"
        raise BadInput(f"{name} is silent ({level}; below {20 * math.log10(SILENT_RMS):.0f} dBFS); a voice needs "
                       f"audible speech", "audio")
    clipped = float(np.mean(np.abs(x) >= FULL_SCALE))
    if clipped > MAX_CLIPPED_FRACTION:
        raise BadInput(f"{name} is clipped: {clipped:.1%} of its samples sit at full scale, which distorts the "
                       f"voice; record it at a lower level", "audio")
    return clip
