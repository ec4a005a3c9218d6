"""Voices (history prompts): validated token arrays, `.npz` files in Suno's format, and preset libraries."""

from __future__ import annotations

import difflib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np

from .constants import CODEBOOK_SIZE, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS, SEMANTIC_VOCAB_SIZE
from .errors import BadInput

PROMPT_KEYS = ("semantic_prompt", "coarse_prompt", "fine_prompt")


@dataclass(frozen=True)
class Voice:
    """A speaker prompt: semantic (n,), coarse (2, m) and fine (8, m) tokens, as in Suno's `.npz` files."""

    semantic_prompt: np.ndarray
    coarse_prompt: np.ndarray
    fine_prompt: np.ndarray

    def __post_init__(self):
        for key, rows, high in (("semantic_prompt", None, SEMANTIC_VOCAB_SIZE),
                                ("coarse_prompt", N_COARSE_CODEBOOKS, CODEBOOK_SIZE),
                                ("fine_prompt", N_FINE_CODEBOOKS, CODEBOOK_SIZE)):
            object.__setattr__(self, key, check_tokens(f"voice {key}", getattr(self, key), rows, high))
        if self.coarse_prompt.shape[1] != self.fine_prompt.shape[1]:
            raise BadInput(f"voice: coarse_prompt has {self.coarse_prompt.shape[1]} frames but fine_prompt has "
                           f"{self.fine_prompt.shape[1]}; they must cover the same audio")

    @classmethod
    def from_dict(cls, prompts: Mapping[str, object]) -> "Voice":
        missing = [k for k in PROMPT_KEYS if k not in prompts]
        if missing:
            raise BadInput(f"voice is missing {', '.join(missing)}; a voice needs {', '.join(PROMPT_KEYS)}")
        return cls(*(np.asarray(prompts[k]) for k in PROMPT_KEYS))

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "Voice":
        """Read Suno's `.npz` format (pickled content is refused; at most MAX_VOICE_BYTES)."""
        try:
            if os.path.getsize(path) > MAX_VOICE_BYTES:
                raise BadInput(f"voice file {str(path)!r} is larger than {MAX_VOICE_BYTES >> 20} MB; "
                               f"a voice is a few hundred kB at most")
            if not zipfile.is_zipfile(path):
                raise BadInput(f"voice file {str(path)!r} is not a readable .npz voice: not a zip of "
                               f"{', '.join(PROMPT_KEYS)} integer arrays, as `--save-voice` writes")
            with np.load(path, allow_pickle=False) as data:
                return cls.from_dict({k: data[k] for k in data.files})
        except FileNotFoundError:
            raise BadInput(f"voice file {str(path)!r} does not exist") from None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            if isinstance(e, BadInput):
                raise
            reason = "it holds pickled objects" if "pickle" in str(e) else str(e)
            raise BadInput(f"voice file {str(path)!r} is not a readable .npz of integer arrays "
                           f"({', '.join(PROMPT_KEYS)}): {reason}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the voice as an `.npz` that Suno's code and fastbark both read (all or nothing)."""
        from .output import write_atomically
        check_voice_path(path)
        write_atomically(path, lambda f: np.savez(f, **{k: getattr(self, k) for k in PROMPT_KEYS}))


MAX_VOICE_BYTES = 16 << 20  # Suno's presets are ~60 kB; a long clip saved as a voice stays well under this


def check_voice_path(path: str | os.PathLike) -> None:
    """A voice is saved as the exact path given, which must end in .npz (so that `voice=path` reads it back)."""
    from .output import check_writable
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).endswith(".npz"):
        raise BadInput(f"a voice file name must end in .npz, got {path!r}")
    check_writable(path, "voice file")


def check_tokens(name: str, value, rows: int | None, high: int, allow_empty: bool = False) -> np.ndarray:
    """An integer token array of shape (n,) (rows None) or (rows, n), values in [0, high), as int64."""
    arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        raise BadInput(f"{name} must hold integer tokens, got dtype {arr.dtype}")
    want = "(n,)" if rows is None else f"({rows}, n)"
    if (rows is None and arr.ndim != 1) or (rows is not None and (arr.ndim != 2 or arr.shape[0] != rows)):
        raise BadInput(f"{name} must have shape {want}, got {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return arr.astype(np.int64)
        raise BadInput(f"{name} is empty; it needs at least one token")
    if arr.min() < 0 or arr.max() >= high:
        raise BadInput(f"{name} has tokens outside [0, {high}): min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


VoiceLike = Union[None, str, os.PathLike, Voice, Mapping[str, object]]


class VoiceLibrary:
    """Named presets from a `speaker_embeddings_path.json`; each voice's files are fetched on first use."""

    def __init__(self, presets: Mapping[str, Mapping[str, str]], fetch: Callable[[str], str],
                 npz_presets: Mapping[str, Path] | None = None):
        self.presets = {name: paths for name, paths in presets.items() if isinstance(paths, Mapping)}
        self.npz_presets = dict(npz_presets or {})  # name -> .npz file (Suno's own layout)
        self._fetch = fetch  # relative path in the checkpoint -> local file path
        self._loaded: dict[str, Voice] = {}

    @classmethod
    def from_npz_folder(cls, folder: str | os.PathLike) -> "VoiceLibrary":
        """Presets as Suno ships them: `<folder>/v2/en_speaker_6.npz`, `<folder>/announcer.npz`, ..."""
        folder = Path(folder)
        names = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.npz"))
        return cls({}, fetch=lambda rel: str(folder / rel), npz_presets={n: folder / f"{n}.npz" for n in names})

    def names(self) -> list[str]:
        return sorted([*self.presets, *self.npz_presets])

    def __contains__(self, name: str) -> bool:
        return name in self.presets or name in self.npz_presets

    def get(self, name: str) -> Voice:
        if name not in self._loaded:
            if name in self.npz_presets:
                self._loaded[name] = Voice.from_npz(self.npz_presets[name])
            elif name in self.presets:
                entry = self.presets[name]
                missing = [k for k in PROMPT_KEYS if k not in entry]
                if missing:
                    raise BadInput(f"voice preset {name!r} lists no {', '.join(missing)} in speaker_embeddings_path.json")
                arrays = {}
                for key in PROMPT_KEYS:
                    local = self._fetch(_safe_relative(entry[key]))
                    try:
                        arrays[key] = np.load(local, allow_pickle=False)
                    except ValueError as e:
                        raise BadInput(f"voice preset {name!r}: {entry[key]} is not a plain .npy array: {e}") from None
                self._loaded[name] = Voice.from_dict(arrays)
            else:
                raise BadInput(unknown_voice_message(name, self.names()))
        return self._loaded[name]


def _safe_relative(path: str) -> str:
    """Refuse preset paths that leave the checkpoint (absolute, or with '..')."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts:
        raise BadInput(f"voice preset path {path!r} points outside the checkpoint")
    return p.as_posix()


def unknown_voice_message(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    listing = f" {len(known)} presets are available (`fastbark voices` lists them)." if known else \
        " This checkpoint has no presets; give a path to an .npz voice file instead."
    return f"unknown voice {name!r}.{hint}{listing}"


def resolve_voice(voice: VoiceLike, library: VoiceLibrary | None) -> Voice | None:
    """Turn any accepted voice form into a Voice: None, a preset name, an `.npz` path, a dict or a Voice."""
    if voice is None or isinstance(voice, Voice):
        return voice
    if isinstance(voice, Mapping):
        return Voice.from_dict(voice)
    if isinstance(voice, (str, os.PathLike)):
        name = os.fspath(voice)
        if library is not None and name in library:
            return library.get(name)
        if name.endswith(".npz") or os.path.isfile(name):
            return Voice.from_npz(name)
        message = unknown_voice_message(name, library.names() if library else [])
        if os.path.isfile(name + ".npz"):
            message += f" A voice file {name + '.npz'!r} exists: give its full name."
        raise BadInput(message)
    raise BadInput(f"voice must be None, a preset name, an .npz path, a dict of arrays or a Voice, "
                   f"got {type(voice).__name__}")
