"""How the folder runner shares its work: chunks sized for the lanes, and a process pool in
which this process works too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from unlearnable.io import runner
from unlearnable.io.executors import AHEAD_PER_WORKER, ProcessExecutor, SerialExecutor
from unlearnable.io.work import Task


def _files(folder: Path, sizes: list[int]) -> list[Task]:
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for index, size in enumerate(sizes):
        name = f"f{index:03d}.bin"
        (folder / name).write_bytes(b"x" * size)
        tasks.append(Task(name, 0, ""))
    return tasks


def test_large_files_are_spread_over_the_lanes_and_the_last_chunks_are_small(tmp_path):
    # 40 photos of 1.2 MB went out as 13 + 13 + 13 + 1 files (16 MB chunks): on 2 workers one
    # did 26 files while the other waited
    tasks = _files(tmp_path, [1_200_000] * 40)
    chunks = runner.chunk_tasks(tmp_path, tasks, lanes=2)
    assert [task for chunk in chunks for task in chunk] == tasks  # each once, in order
    assert max(len(chunk) for chunk in chunks) == 1  # a file over the limit goes alone


def test_chunks_shrink_towards_the_end_and_keep_their_caps(tmp_path):
    tasks = _files(tmp_path, [50_000] * 200)
    chunks = runner.chunk_tasks(tmp_path, tasks, lanes=2)
    sizes = [len(chunk) for chunk in chunks]
    assert [task for chunk in chunks for task in chunk] == tasks
    assert all(size * 50_000 <= runner.CHUNK_BYTES for size in sizes)
    assert sizes[-1] == 1 and sizes[0] > sizes[-1]
    assert sizes == sorted(sizes, reverse=True)  # guided: never larger than the one before
    # the bytes still to come bound each chunk: the last quarter of the work is in >= 4 chunks
    tail_chunks = next(
        count
        for count in range(1, len(sizes) + 1)
        if sum(sizes[-count:]) >= 50  # the last 50 of 200 files
    )
    assert tail_chunks >= 4
    count = 16 * runner.CHUNK_FILES  # enough bytes that the file cap binds first
    small = _files(tmp_path / "small", [1_000] * count)
    small_sizes = [len(chunk) for chunk in runner.chunk_tasks(tmp_path / "small", small, 4)]
    assert max(small_sizes) == runner.CHUNK_FILES and sum(small_sizes) == count


def test_one_lane_keeps_whole_chunks_and_unreadable_files_count_as_empty(tmp_path):
    tasks = _files(tmp_path, [1_000] * 10) + [Task("missing.bin", 0, "")]
    chunks = runner.chunk_tasks(tmp_path, tasks)
    assert [task for chunk in chunks for task in chunk] == tasks
    assert len(chunks[0]) >= 5  # half the bytes at first


def _where(context: tuple[int, str], item: int) -> tuple[int, int]:
    """An item that notes where it ran; in the main process it takes 50 ms until a worker
    has run one (so the worker, still importing torch at first, gets its turn)."""
    main_pid, folder = context
    marker = Path(folder, "worker-ran")
    if os.getpid() != main_pid:
        marker.touch()
    elif not marker.exists():
        time.sleep(0.05)
    return item, os.getpid()


def test_this_process_works_beside_its_worker_with_the_same_results(tmp_path):
    items = list(range(400))
    context = (os.getpid(), str(tmp_path))
    results = list(ProcessExecutor(2).run(_where, context, items, lambda item, message: None))
    assert sorted(item for item, _ in results) == items  # every item answered exactly once
    pids = {pid for _, pid in results}
    assert os.getpid() in pids  # this process took items
    assert len(pids) == 2  # and the spawned worker did too, once it was ready
    pooled = list(
        ProcessExecutor(2, in_process=False).run(_where, context, items[:8], lambda i, m: None)
    )
    assert os.getpid() not in {pid for _, pid in pooled}
    assert sorted(item for item, _ in pooled) == items[:8]


def test_a_small_job_is_done_here_without_waiting_for_a_worker_to_start(tmp_path):
    # a worker takes ~1.5 s to import torch: no item waits for it while this process is free
    results = list(
        ProcessExecutor(4).run(_where, (-1, str(tmp_path)), [0, 1, 2], lambda i, m: None)
    )
    assert sorted(item for item, _ in results) == [0, 1, 2]
    assert {pid for _, pid in results} == {os.getpid()}


def _die_in_a_worker(context: tuple[int, str], item: int) -> tuple[str, int, int]:
    main_pid, folder = context
    died = Path(folder, "died")
    if os.getpid() != main_pid:
        died.touch()
        os._exit(3)  # a worker killed mid-run (as by the out-of-memory killer)
    if not died.exists():
        time.sleep(0.05)  # until then this process is slow, so the worker gets items
    return ("done", item, os.getpid())


def test_a_dead_worker_beside_this_process_loses_only_what_it_held(tmp_path):
    items = list(range(400))
    context = (os.getpid(), str(tmp_path))
    results = list(
        ProcessExecutor(2).run(_die_in_a_worker, context, items, lambda i, m: ("lost", i, 0))
    )
    assert sorted(item for _, item, _ in results) == items  # every item answered exactly once
    lost = [item for kind, item, _ in results if kind == "lost"]
    assert 1 <= len(lost) <= AHEAD_PER_WORKER  # what the worker held: running and queued
    # everything else ran here, the items not yet handed out included
    assert {pid for kind, _, pid in results if kind == "done"} == {os.getpid()}


def test_this_process_keeps_its_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # more than a lane's one, so that the lane's setting shows
    try:
        seen = list(ProcessExecutor(2).run(_threads, None, [0, 1, 2, 3], lambda i, m: None))
        assert torch.get_num_threads() == 2
        assert seen == [1, 1, 1, 1]  # one per lane, here as in the worker
        assert list(SerialExecutor().run(_threads, None, [0], lambda i, m: None)) == [2]
    finally:
        torch.set_num_threads(before)


def _threads(context: None, item: int) -> int:
    import torch

    return torch.get_num_threads()


def test_an_executor_needs_a_lane():
    with pytest.raises(ValueError):
        ProcessExecutor(0)
