"""Running the worker over every record: pipelined in this process, or in forked children.

With ``num_proc > 1`` and at least two batches, the records are cut into ``num_proc`` equal
shares: this process works on the first while forked children work on the others. Children
inherit the loaded worker (tokenizer, template, detector) and the records, and send back one
Arrow table each through a pipe; the result is in input order. Otherwise batches are
pipelined in-process (:meth:`~.worker.Worker.run_pipelined`).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from .columns import rows_table
from .settings import ProcessError
from .worker import Items, Worker


def run_all(worker: Worker, items: Items, batch: int, num_proc: int, bar: Any) -> Any:
    """The rows of every record as one Arrow table, in input order. ``bar`` is the progress
    bar over the batch starts ``range(0, len(items), batch)``."""
    if num_proc == 1 or len(items) < 2 * batch:
        batches = (items[start : start + batch] for start in bar)
        return rows_table(worker.run_pipelined(batches))
    return _run_forked(worker, items, batch, num_proc, bar)


def _share(worker: Worker, items: Items, batch: int, bar: Any = None) -> Any:
    """The example rows of ``items``, batch after batch, as one Arrow table."""

    def batches():
        for start in range(0, len(items), batch):
            yield worker.run(items[start : start + batch])
            if bar is not None:
                bar.update(1)

    return rows_table(batches())


def _run_forked(worker: Worker, items: Items, batch: int, num_proc: int, bar: Any) -> Any:
    """:func:`run_all` over ``num_proc`` processes. A failing child fails the stage."""
    import pickle
    import signal

    import pyarrow as pa

    size = -(-len(items) // num_proc)
    shares = [items[i : i + size] for i in range(0, len(items), size)]
    # one tokenizer thread per process (read by tokenizers at every call); set before fork,
    # tokenizers does not warn about a fork after its thread pool was used
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # what exists now is never garbage-collected in the children: their collector does not
    # walk (and copy-on-write) the parent's objects (the gc.freeze documentation's advice)
    gc.freeze()
    children: list[tuple[int, int, int]] = []  # (pid, read end of its pipe, records)
    try:
        for share in shares[1:]:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: compute, send, and leave without running any cleanup
                os.close(read_end)
                code = 0
                try:
                    payload = pickle.dumps(("ok", _share(worker, share, batch)), protocol=5)
                except BaseException as exc:  # noqa: BLE001 - reported by the parent
                    payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
                    code = 1
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(payload)
                os._exit(code)
            os.close(write_end)
            children.append((pid, read_end, len(share)))
        tables = [_share(worker, shares[0], batch, bar)]
        while children:
            pid, read_end, records = children[0]
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            children.pop(0)  # reaped: never signalled again
            status, result = pickle.loads(data) if data else ("error", "died without a result")
            if status != "ok":
                raise ProcessError(f"processing worker {pid} failed: {result}")
            tables.append(result)
            bar.update(-(-records // batch))
    finally:
        for pid, read_end, _ in children:  # interrupted or failed: no worker outlives us
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(read_end)
            except OSError:
                pass
        gc.unfreeze()
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    return pa.concat_tables(tables)
