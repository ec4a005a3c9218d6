"""Batch synthesis on Ray: Ray Data reads the items, a pool of actors (each loads the engine once)
generates them in batches, and the files and manifest are those of the local run (batch.py).

Use it from the command line (`fastbark batch JOBS --out DIR --ray [ADDRESS]`), or in your own
pipeline: `ds.map_batches(FastbarkActor, fn_constructor_kwargs=dict(model=..., out=...), concurrency=N,
num_cpus=C, batch_size=B)` over rows `{"item": json.dumps({...})}` (see `synthesize`). `pip install
fastbark[ray]`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from .batch import Item, Manifest, batches, run_batch
from .errors import BadInput
from .options import EngineOptions


def _ray():
    try:
        import ray
    except ImportError:
        raise BadInput("--ray needs Ray: pip install 'fastbark[ray]'") from None
    return ray


class FastbarkActor:
    """A Ray Data callable class: one engine per actor, with as many torch threads as the CPUs it reserved
    (so that several actors on one machine do not oversubscribe its cores)."""

    def __init__(self, model: str, out: str, engine: dict | None = None, codec: str | None = None,
                 tokenizer: str | None = None, cpus: float = 1.0, vocos: str | None = None):
        from .engine import Bark
        engine = dict(engine or {})
        engine["threads"] = engine.get("threads") or max(1, math.floor(cpus))
        self.tts = Bark.from_pretrained(model, codec=codec, tokenizer=tokenizer, options=EngineOptions(**engine),
                                        vocos=vocos)
        self.out = Path(out)

    def __call__(self, rows: dict) -> dict:
        items = [Item(**json.loads(x)) for x in rows["item"]]
        records = []
        for batch in batches(items, len(items)):
            records += run_batch(self.tts, batch, self.out)
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records]}


def item_rows(items: list[Item]) -> list[dict]:
    """Items as Ray rows, ordered by group so that a Ray batch mostly holds one voice and one set of options."""
    ordered = [item for batch in batches(items, len(items) or 1) for item in batch]
    return [{"item": json.dumps(asdict(item), ensure_ascii=False)} for item in ordered]


def synthesize(dataset, *, model: str, out: str, engine: dict | None = None, actors: int = 1, cpus_per_actor: float = 1,
               gpus_per_actor: float = 0, batch_size: int = 8, codec: str | None = None,
               tokenizer: str | None = None, vocos: str | None = None):
    """`dataset` (a Ray Dataset of item rows) -> a Dataset of manifest records (`{"record": json}`), lazily."""
    from ray.data import ActorPoolStrategy
    return dataset.map_batches(FastbarkActor, batch_size=batch_size, compute=ActorPoolStrategy(size=actors),
                               num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
                               fn_constructor_kwargs=dict(model=model, out=out, engine=engine, codec=codec,
                                                          tokenizer=tokenizer, cpus=cpus_per_actor, vocos=vocos))


def run_on_ray(args, engine: EngineOptions, manifest: Manifest, items: list[Item]) -> list[dict]:
    """The CLI's --ray run: records are appended to the manifest as they stream back. `-q` silences Ray's
    own progress bars and start-up notices too."""
    records = []
    if not items:
        return records
    ray = _ray()
    warnings.filterwarnings("ignore", message=".*deprecated.*", module=r"ray\..*")  # Ray's own config notices
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if args.ray == "local" else args.ray, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, logging_level=logging.ERROR if args.quiet else logging.INFO)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    if args.quiet:
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    out = manifest.out
    try:
        engine_fields = {k: v for k, v in asdict(engine).items() if k != "threads" or v is not None}
        records_ds = synthesize(ray.data.from_items(item_rows(items)), model=str(args.model), out=str(out.resolve()),
                                engine=engine_fields, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                                gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size,
                                codec=args.codec, tokenizer=args.tokenizer, vocos=args.vocos)
        for record in _records(records_ds):
            manifest.append([record])
            records.append(record)
        return records
    finally:
        context.enable_progress_bars = bars
        if started:
            ray.shutdown()


def _records(ds) -> Iterator[dict]:
    for row in ds.iter_rows():
        yield json.loads(row["record"])
