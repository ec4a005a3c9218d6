"""Where a checkpoint's files come from: a local folder, or the Hugging Face hub (downloaded on demand).

Only the files the engine needs are fetched: never Suno's multi-GB `.pt` files that share the hub
repos, and a voice's three `.npy` files only when that voice is first used.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from urllib.parse import urlparse
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from ..errors import BadInput, CheckpointError

HUB_ID = re.compile(r"^([A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")  # owner/name, or a legacy single name
MAX_JSON_BYTES = 16 << 20  # a config or preset table is a few kB; refuse anything absurd


def read_json(path: str | os.PathLike, what: str, kind: type = dict):
    """A JSON file's content, which must be a `kind`; CheckpointError naming the file otherwise."""
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise CheckpointError(f"{what} {str(path)!r} is larger than {MAX_JSON_BYTES >> 20} MB; not a Bark file")
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON {'object' if kind is dict else kind.__name__}, "
                              f"not {type(value).__name__ if value is not None else 'null'}")
    return value


class LocalFiles:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __str__(self):
        return str(self.root)

    def get(self, name: str) -> str | None:
        path = self.root / name
        return str(path) if path.is_file() else None

    def list(self, pattern: str) -> list[str]:
        return sorted(p.name for p in self.root.glob(pattern))


@functools.cache
def hub_unreachable() -> str:
    """Why the hub cannot be reached ('' if it can): one quick look-up and connect, so that an offline
    first run fails at once instead of after the hub library's retries."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"
    return ""


class HubFiles:
    """Files of a hub repo, each downloaded (or found in the usual cache) the first time it is asked for.
    When the hub cannot be reached, only the cache is used (and the error says so at once)."""

    def __init__(self, repo_id: str, revision: str | None = None, cache_dir: str | None = None,
                 local_files_only: bool = False, download=hf_hub_download):
        self.repo_id, self.revision, self.cache_dir = repo_id, revision, cache_dir
        self.offline = "" if local_files_only or download is not hf_hub_download else hub_unreachable()
        self.local_files_only = local_files_only or bool(self.offline)
        self._download = download
        self.unreachable = False  # set when a file could be neither downloaded nor found in the cache

    def __str__(self):
        return f"hub repo {self.repo_id}"

    def get(self, name: str) -> str | None:
        try:
            return self._download(repo_id=self.repo_id, filename=name, revision=self.revision,
                                  cache_dir=self.cache_dir, local_files_only=self.local_files_only)
        except LocalEntryNotFoundError:  # offline (or local_files_only) and not in the cache
            self.unreachable = True
            return None
        except EntryNotFoundError:  # the repo has no such file
            return None
        except (RepositoryNotFoundError, GatedRepoError) as e:
            raise CheckpointError(f"cannot open hub repo {self.repo_id!r}: {str(e).splitlines()[0]}") from None
        except RevisionNotFoundError:
            raise CheckpointError(f"hub repo {self.repo_id!r} has no revision {self.revision!r}") from None
        except (OSError, ValueError) as e:  # connection errors
            self.unreachable = True
            raise CheckpointError(self.offline_message(f" ({type(e).__name__}: {str(e).splitlines()[0]})")) from None

    def offline_message(self, detail: str = "") -> str:
        where = self.cache_dir or "the Hugging Face cache"
        detail = detail or (f" ({self.offline})" if self.offline else "")
        return (f"cannot download {self.repo_id!r} from the hub{detail}, and the files needed are not in "
                f"{where}. Connect once to cache them, or pass a local folder (see `fastbark convert`); "
                f"HF_HUB_OFFLINE=1 makes the hub library use its cache only, without retrying the network.")


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep in source and not HUB_ID.match(source) \
        or source.endswith((".th", ".json", ".txt", ".pt", ".bin", ".safetensors", ".npz"))


def open_source(source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None,
                local_files_only: bool = False, download=hf_hub_download,
                what: str = "checkpoint") -> LocalFiles | HubFiles:
    """A local folder, or else a hub id like 'suno/bark-small'."""
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise BadInput(f"the {what} must be a hub id like 'suno/bark-small' or a local folder, got {source!r}")
    path = Path(source)
    if path.is_dir():
        return LocalFiles(path)
    if path.exists():
        raise CheckpointError(f"{str(source)!r} is a file; give the folder that holds the checkpoint")
    if isinstance(source, str) and HUB_ID.match(source) and not looks_like_path(source):
        return HubFiles(source, revision, cache_dir, local_files_only, download)
    if looks_like_path(os.fspath(source)) or not isinstance(source, str):
        raise CheckpointError(f"{what} {str(source)!r} not found: neither a local folder nor a hub id like "
                              f"'suno/bark-small'")
    raise CheckpointError(f"{str(source)!r} is neither a local folder nor a hub id like 'suno/bark-small'")


def required(files: LocalFiles | HubFiles, name: str, why: str) -> str:
    path = files.get(name)
    if path is None:
        if isinstance(files, HubFiles) and files.unreachable:
            raise CheckpointError(files.offline_message())
        raise CheckpointError(f"{files} has no {name} ({why})")
    return path


def first_of(files: LocalFiles | HubFiles, names: list[str]) -> str | None:
    for name in names:
        path = files.get(name)
        if path is not None:
            return path
    return None
