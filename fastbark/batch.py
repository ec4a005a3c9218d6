"""Batch synthesis: many items (JSON Lines or CSV) to files in a folder, resumably, with a manifest.

An item is `id`, `text`, and optionally `voice`, `seed`, `format` (wav by default) and any field of
GenerationOptions or LongFormOptions. Item `id`'s audio goes to `OUT/<id>.<format>`, written under a
temporary name and renamed when complete; then one line is appended to `OUT/manifest.jsonl`: its
duration, segments, seed, options and timings, or its error. A rerun skips every id whose manifest
line says "ok" and whose file exists, so a crash or Ctrl-C loses only the batch under way. A bad item
(malformed line, unsafe or repeated id, unknown voice, bad option) is recorded with its error, and
the rest goes on.

`batches` and `run_batch` are the engine-side loop that the CLI and the Ray actors (ray_batch.py) share.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

from .errors import BadInput
from .options import GenerationOptions, LongFormOptions
from .output import FORMATS, write_audio

MANIFEST = "manifest.jsonl"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a file name: no separators, no "..", no hidden files
ITEM_KEYS = {"id", "text", "voice", "seed", "format"}
OPTION_KEYS = {f.name for f in fields(GenerationOptions)} | {f.name for f in fields(LongFormOptions)}
MAX_LINE_BYTES = 1 << 20  # one item's line: a long chapter fits


@dataclass(frozen=True)
class Item:
    """One checked item of a job."""

    id: str
    text: str
    voice: str | None
    seed: int | None
    format: str
    options: dict  # GenerationOptions and LongFormOptions fields, as given

    @property
    def group(self) -> tuple:
        """Items of one group share a voice and options, so they run as one batch."""
        return self.voice, self.format, json.dumps(self.options, sort_keys=True)


def check_item(raw, seen: set[str]) -> Item:
    """A raw item (a dict from a JSON line or a CSV row) as an Item; BadInput naming what is wrong."""
    if not isinstance(raw, dict):
        raise BadInput(f"an item must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - ITEM_KEYS - OPTION_KEYS
    if unknown:
        raise BadInput(f"unknown key(s) {', '.join(sorted(unknown))}; an item takes {', '.join(sorted(ITEM_KEYS))} "
                       f"and the option fields")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not SAFE_ID.match(item_id) or ".." in item_id:
        raise BadInput(f"id {item_id!r} is not a safe file name: 1-128 of A-Z a-z 0-9 . _ -, not starting with "
                       f"'.' or '-', no '..'")
    if item_id in seen:
        raise BadInput(f"id {item_id!r} appears more than once")
    text, voice, seed = raw.get("text"), raw.get("voice") or None, raw.get("seed")
    if not isinstance(text, str) or not text.strip():
        raise BadInput("text must be a non-empty string")
    if voice is not None and not isinstance(voice, str):
        raise BadInput(f"voice must be a preset name or an .npz path, got {voice!r}")
    fmt = raw.get("format") or "wav"
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    options = {k: v for k, v in raw.items() if k in OPTION_KEYS}
    GenerationOptions(**{k: v for k, v in options.items() if k in GenerationOptions.__dataclass_fields__})
    LongFormOptions(**{k: v for k, v in options.items() if k in LongFormOptions.__dataclass_fields__})
    return Item(item_id, text, voice, seed, fmt, options)


def read_items(path: str | os.PathLike) -> Iterator[tuple[int, dict | BadInput]]:
    """(line number, raw item) for each line of a .jsonl or .csv file; a line that cannot be read gives
    (line number, BadInput) instead."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise BadInput(f"cannot read the jobs file {str(path)!r}: {e.strerror}") from None
    with handle:
        if path.suffix.lower() == ".csv":
            try:
                for n, row in enumerate(csv.DictReader(handle), start=2):  # line 1 is the header
                    raw = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                    yield n, _typed_csv(raw)
            except (csv.Error, UnicodeDecodeError) as e:
                raise BadInput(f"{path} is not readable CSV: {e}") from None
            return
        if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
            raise BadInput(f"the jobs file must be JSON Lines (.jsonl) or CSV (.csv), not {path.name!r}")
        n = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_BYTES + 1)
            except UnicodeDecodeError as e:
                yield n + 1, BadInput(f"not UTF-8 ({e.reason}); the rest of the file cannot be read")
                return
            if not line:
                return
            n += 1
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                yield n, BadInput(f"longer than {MAX_LINE_BYTES >> 20} MB")
                handle.readline()  # skip the rest of it
                continue
            try:
                yield n, json.loads(line)
            except ValueError as e:
                yield n, BadInput(f"not a JSON object: {e}")


def _typed_csv(raw: dict) -> dict:
    """CSV cells are text: numbers and booleans for the fields that take them."""
    typed = {}
    for key, value in raw.items():
        if key in ("seed",) or key in OPTION_KEYS and key not in ("language", "speaker"):
            low = value.strip().lower()
            if low in ("true", "false"):
                value = low == "true"
            elif low == "none":
                value = None
            else:
                try:
                    value = int(value) if re.fullmatch(r"[+-]?\d+", value.strip()) else float(value)
                except ValueError:
                    pass  # left as text: the option's check says what it takes
        typed[key] = value
    return typed


def read_manifest(out: Path) -> dict[str, dict]:
    """The last record of each id in OUT/manifest.jsonl (a half-written last line from a crash is ignored)."""
    records = {}
    try:
        with open(out / MANIFEST, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    records[record["id"]] = record
    except FileNotFoundError:
        pass
    return records


def done_ids(out: Path) -> set[str]:
    return {i for i, r in read_manifest(out).items() if r.get("status") == "ok" and (out / r.get("file", "")).is_file()}


def append_manifest(out: Path, records: Iterable[dict]) -> None:
    """Append whole lines and sync them: a record is written only after its file is complete."""
    with open(out / MANIFEST, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def error_record(item_id, line: int | None, error: Exception) -> dict:
    return {"id": item_id, "status": "error", "line": line, "error": str(error)}


def rejected_record(given_id, line: int, error: Exception) -> dict:
    """An item refused before running: its id may be unsafe or taken, so it is kept apart from `id`."""
    return {"id": None, "given_id": given_id, "status": "error", "line": line, "error": str(error)}


def batches(items: list[Item], batch_size: int) -> Iterator[list[Item]]:
    """The items in batches of at most `batch_size`, each batch from one group (one voice, one set of options)."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    for group in groups.values():
        for first in range(0, len(group), batch_size):
            yield group[first: first + batch_size]


def run_batch(tts, batch: list[Item], out: Path) -> list[dict]:
    """Generate one batch (items of one group), write each file, and return their manifest records; a
    batch that fails at run time (an unknown voice, say) gets one error record per item."""
    start = time.perf_counter()
    try:
        outs = tts.generate([i.text for i in batch], voice=batch[0].voice, seed=[i.seed for i in batch],
                            batch_size=len(batch), **batch[0].options)
    except BadInput as e:
        return [error_record(i.id, None, e) for i in batch]
    seconds = (time.perf_counter() - start) / len(batch)
    records = []
    for item, result in zip(batch, outs):
        name = f"{item.id}.{item.format}"
        write_audio(str(out / name), result.audio, item.format)
        records.append({"id": item.id, "status": "ok", "file": name, "duration_s": result.duration_s,
                        "seed": item.seed, "voice": item.voice, "options": item.options,
                        "segments": [{"text": s.text, "start": s.start, "end": s.end,
                                      "semantic_tokens": len(s.semantic_tokens)} for s in result.segments],
                        "timings": {"generate_s_per_item": seconds, "batch": len(batch)}})
    return records


def plan(jobs: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, list[tuple[int, Item]], list[dict], int]:
    """Read and check every item, skipping those already done: (out folder, (line, item) to run, error
    records, how many were skipped)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write into {str(out)!r}: permission denied")
    done, seen = done_ids(out), set()
    todo, errors, skipped = [], [], 0
    for line, raw in read_items(jobs):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            if isinstance(raw, BadInput):
                raise raw
            item = check_item(raw, seen)
        except BadInput as e:
            errors.append(rejected_record(raw_id if isinstance(raw_id, (str, int)) else None, line, e))
            continue
        seen.add(item.id)
        if item.id in done:
            skipped += 1
        else:
            todo.append((line, item))
    return out, todo, errors, skipped


def synthesize(tts, items: Iterable[dict], out: str | os.PathLike, batch_size: int = 8) -> Iterator[dict]:
    """The same job from Python: raw items (dicts) -> manifest records, as each batch finishes. Files and
    the manifest go to `out`, and items already done there are skipped, as with `fastbark batch`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done, seen, todo = done_ids(out), set(), []
    for n, raw in enumerate(items, start=1):
        try:
            item = check_item(raw, seen)
        except BadInput as e:
            record = rejected_record(raw.get("id") if isinstance(raw, dict) else None, n, e)
            append_manifest(out, [record])
            yield record
            continue
        seen.add(item.id)
        if item.id not in done:
            todo.append(item)
    for batch in batches(todo, batch_size):
        records = run_batch(tts, batch, out)
        append_manifest(out, records)
        yield from records
