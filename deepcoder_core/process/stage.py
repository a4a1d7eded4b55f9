"""The stage function :func:`process`: read the trajectories, run the workers, keep, count, write.

Records are read as raw lines (``jsonl_lines``: lines over ``processing.max_record_bytes``
are reported, not held) and decoded by the workers (:mod:`.parallel`). The output is built in
``.DIR.tmp-*`` next to ``DIR`` and renamed into place, so a killed run leaves the old dataset
or none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ..config import Config, snapshot
from ..io import BadLine, atomic_write_json, jsonl_lines, packed_format
from ..plugins import PluginError
from ..spans import FORMATS
from . import summary as report
from .columns import PRIVATE
from .overflow import OVERFLOW
from .parallel import run_all
from .settings import ProcessError, Settings
from .worker import get_worker


def process(
    config: Config,
    *,
    trajectories: Path,
    out: Path,
    tokenizer: str | None = None,
    detector: str | None = None,
    num_proc: int | None = None,
    fmt: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Turn ``trajectories`` (JSONL) into a tokenized dataset in ``out``; returns the summary.

    ``out`` gets the ``datasets`` folder (``save_to_disk``), ``summary.json`` and
    ``config.yaml``; it is built next to ``out`` and moved into place at the end, so a killed
    run leaves the previous output (or none), never a half-written one.
    """
    started = time.perf_counter()
    cfg = config.processing
    trajectories, out = Path(trajectories), Path(out)
    fmt = fmt or cfg.format
    if fmt not in ("auto", *FORMATS):
        raise ProcessError(f"format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    if cfg.overflow not in OVERFLOW:
        raise ProcessError(
            f"processing.overflow {cfg.overflow!r}: expected one of {', '.join(OVERFLOW)}"
        )
    if cfg.max_length < 8:
        raise ProcessError(f"processing.max_length {cfg.max_length}: must be at least 8")
    if not trajectories.is_file():
        raise ProcessError(f"{trajectories}: no such trajectories file")
    _check_trajectories(trajectories)
    num_proc = int(cfg.num_proc if num_proc is None else num_proc)
    if num_proc <= 0:  # one per core this process may use
        num_proc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if not hasattr(os, "fork"):
        num_proc = 1  # workers inherit the loaded tokenizer by fork (Linux, macOS)
    settings = Settings.from_config(config, tokenizer=tokenizer, detector=detector, fmt=fmt)
    try:
        worker = get_worker(settings)  # fails early on a bad tokenizer or detector name
    except PluginError as exc:
        raise ProcessError(str(exc)) from exc

    bad: list[BadLine] = []
    phases = {"setup": time.perf_counter() - started}
    # lines are decoded by the workers, in parallel; bad JSON is reported from there
    items = [
        (line, index, raw)
        for index, (line, raw) in enumerate(
            jsonl_lines(trajectories, errors=bad, max_line_bytes=cfg.max_record_bytes)
        )
    ]
    if not items and not bad:
        raise ProcessError(f"{trajectories}: no trajectories: every line is blank")
    if cfg.agreement_sample > 0:  # compared records spread over the file (and the workers)
        worker.agreement_stride = max(1, -(-len(items) // cfg.agreement_sample))
    phases["read"] = time.perf_counter() - started - sum(phases.values())
    batch = max(1, cfg.batch_size)
    chunks = range(0, len(items), batch)
    with click.progressbar(chunks, label="process", file=None if progress else _Null()) as bar:
        table = run_all(worker, items, batch, num_proc, bar)
    phases["records"] = time.perf_counter() - started - sum(phases.values())

    # plain Arrow from here on: a datasets.Dataset is made once, to be saved
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    tally = report.tally(table, bad, dedup=cfg.dedup)
    agreement = report.agreement(
        table, settings.detector, worker.other is not None, cfg.agreement_sample
    )
    table = table.take(pa.array(tally.keep, pa.int64())).drop_columns(list(PRIVATE))
    source_sha256 = _sha256(trajectories)
    config_fingerprint = config.section_fingerprint("processing")
    # the same inputs make the same dataset: its fingerprint says so (and datasets need not
    # hash the table to make one up)
    fingerprint = hashlib.sha256(
        json.dumps(
            [source_sha256, config_fingerprint, dataclasses.asdict(settings)],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    dataset = Dataset(table, fingerprint=fingerprint)
    spans = report.span_figures(table)
    phases["filter"] = time.perf_counter() - started - sum(phases.values())
    records_read = len(items) + len(bad)
    summary = {
        "schema": 1,
        "stage": "process",
        "trajectories": str(trajectories),
        "trajectories_sha256": source_sha256,
        "config_fingerprint": config_fingerprint,
        "tokenizer": settings.tokenizer,
        "chat_template": "tokenizer" if worker.tokenizer.chat_template else "chatml-fallback",
        "template_tools": worker.tools,
        "detector": settings.detector,
        "format": fmt,
        "formats": dict(tally.formats),
        "records": {
            "read": records_read,
            "bad": len(tally.bad_lines),
            "dropped": sum(tally.drops.values()),
            "kept": len(pc.unique(table.column("trajectory_id"))),
        },
        "examples": len(dataset),
        "truncated": tally.notes.get("truncated", 0),
        "split": tally.notes.get("split", 0),
        **spans,
        "drops": dict(sorted(tally.drops.items())),
        "bad_input": report.bad_input(tally.bad_lines),
        "template_missing_chars": tally.missing,
        "agreement": agreement,
        "num_proc": num_proc,
    }
    _write(out, dataset, summary, config)
    phases["write"] = time.perf_counter() - started - sum(phases.values())
    seconds = time.perf_counter() - started
    summary["seconds"] = round(seconds, 3)
    summary["phase_seconds"] = {name: round(value, 3) for name, value in phases.items()}
    summary["trajectories_per_second"] = round(records_read / seconds, 1) if seconds else None
    atomic_write_json(out / "summary.json", summary)
    return summary


def _check_trajectories(path: Path) -> None:
    """Refuse, before any work, a file that cannot hold trajectories: empty or compressed."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise ProcessError(f"{path}: empty file: no trajectories to process (check the path)")
    packed = packed_format(head)
    if packed:
        raise ProcessError(f"{path}: not UTF-8 JSONL (looks {packed})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(out: Path, dataset: Any, summary: dict[str, Any], config: Config) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    from datasets import disable_progress_bars, enable_progress_bars

    disable_progress_bars()
    try:
        # one shard at least: datasets cannot load an empty dataset saved with none
        dataset.save_to_disk(str(staging), num_shards=1 if len(dataset) == 0 else None)
        atomic_write_json(staging / "summary.json", summary)
        snapshot(config, staging / "config.yaml")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{staging.name[-8:]}"
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        enable_progress_bars()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class _Null(io.StringIO):
    """A file that swallows the progress bar when progress is off."""

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass
