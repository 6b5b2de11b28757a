"""Batches on Dask distributed: one task per scan, one model load per worker process.

``brainuad batch --scheduler local`` starts a local cluster of single-threaded worker processes;
``--scheduler tcp://HOST:8786`` uses a running one (e.g. dask-jobqueue's ``SLURMCluster``, whose
scheduler address any node can reach). Everything else is :func:`napari_brainuad.pipeline.iter_batch`'s:
the driver checks names, settings and the output folder, holds its lock, skips complete outputs and
rewrites ``summary.csv`` as results arrive; workers write each scan's outputs atomically, so the
never-overwrite and resume guarantees hold on any number of machines sharing the output folder.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .io import InputError
from .models import AnomalyModel, ModelError, load_model
from .models.registry import bundled_folder
from .progress import Step, Steps, run

LOCAL = "local"
"""The ``--scheduler`` value that starts a local cluster."""


@contextmanager
def dask_client(scheduler: str, workers: int | None = None) -> Iterator:
    """A Dask ``Client`` for the batch: a new local cluster of ``workers`` single-threaded processes
    (all cores by default) for ``"local"``, closed afterwards; else the scheduler at ``scheduler``
    (``tcp://host:port``)."""
    from distributed import Client, LocalCluster

    if scheduler == LOCAL:
        with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"{scheduler}: cannot reach a Dask scheduler there ({exc}).") from None
    with client:
        yield client


def model_reference(model: AnomalyModel) -> str:
    """How a worker loads ``model``: a bundled model by name, any other by its folder (which workers
    on other machines must see at the same path, e.g. on a shared file system)."""
    card = model.card
    if card.folder is not None and Path(card.folder).resolve().parent == bundled_folder().resolve():
        return card.name
    return str(Path(card.folder).resolve())


@functools.lru_cache(maxsize=2)
def worker_model(model_ref: str, device: str) -> AnomalyModel:
    """The model of a batch, loaded once per worker process and kept for its next tasks."""
    return load_model(model_ref, device)


def detect_on_worker(path: Path, paths: dict[str, Path], model_ref: str, device: str, options: dict):
    """One scan of a batch, on a Dask worker: its :class:`~napari_brainuad.pipeline.BatchItem`."""
    import torch
    from distributed import get_worker

    from .pipeline import BatchItem, iter_process_file

    torch.set_num_threads(max(1, get_worker().state.nthreads))
    try:
        model = worker_model(model_ref, device)
    except ModelError as exc:
        return BatchItem(path, "error", str(exc))
    return run(iter_process_file(path, paths, model, **options))


def iter_on_dask(jobs: list[tuple[Path, dict[str, Path]]], client, model_ref: str, device: str, options: dict,
                 on_item: Callable[[list], None]) -> Steps[list]:
    """Run ``(scan, output paths)`` jobs on ``client``'s workers; call ``on_item(items)`` with the items
    done so far (in job order) after each one, and yield a step per finished scan.

    A worker that dies on a scan makes that scan an ``error`` item. Closing the generator (Ctrl-C,
    Cancel) cancels the tasks not yet finished.
    """
    from distributed import as_completed

    from .pipeline import BatchItem

    futures = {client.submit(detect_on_worker, path, paths, model_ref, device, options, pure=False): i
               for i, (path, paths) in enumerate(jobs)}
    items: list = [None] * len(jobs)
    try:
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            try:
                items[i] = future.result()
            except Exception as exc:  # the worker died or the task failed outside detection's own errors
                items[i] = BatchItem(jobs[i][0], "error", f"{jobs[i][0]}: failed on a Dask worker "
                                     f"({type(exc).__name__}: {exc}).")
            on_item([it for it in items if it is not None])
            yield Step(f"{jobs[i][0].name}: {items[i].status}", done / len(jobs))
    finally:
        client.cancel(list(futures))
    return items
