"""How the folder runner shares its work: a process pool in which this process works too."""

from __future__ import annotations

import os

import pytest

from unlearnable.io.executors import ProcessExecutor, SerialExecutor


def _where(context: None, item: int) -> tuple[int, int]:
    return item, os.getpid()


def test_this_process_works_beside_its_worker_with_the_same_results():
    items = list(range(40))
    results = list(ProcessExecutor(2).run(_where, None, items, lambda item, message: None))
    assert sorted(item for item, _ in results) == items  # every item answered exactly once
    pids = {pid for _, pid in results}
    assert os.getpid() in pids  # this process took items
    assert len(pids) == 2  # and one spawned worker did too
    pooled = list(
        ProcessExecutor(2, in_process=False).run(_where, None, items, lambda item, m: None)
    )
    assert os.getpid() not in {pid for _, pid in pooled}
    assert sorted(item for item, _ in pooled) == items


def _die_in_a_worker(main_pid: int, item: int) -> tuple[str, int, int]:
    if item == 0 and os.getpid() != main_pid:
        os._exit(3)  # a worker killed mid-run (as by the out-of-memory killer)
    return ("done", item, os.getpid())


def test_a_dead_worker_beside_this_process_loses_only_what_it_held():
    items = list(range(8))
    results = list(
        ProcessExecutor(2).run(
            _die_in_a_worker, os.getpid(), items, lambda item, message: ("lost", item, 0)
        )
    )
    assert sorted(item for _, item, _ in results) == items  # every item answered exactly once
    # item 0 went to the worker first (the worker is handed its items ahead)
    assert ("lost", 0, 0) in results
    done = [item for kind, item, _ in results if kind == "done"]
    assert len(done) >= len(items) - 2  # at most the worker's running and queued item lost
    assert {pid for kind, _, pid in results if kind == "done"} == {os.getpid()}


def test_this_process_keeps_its_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen = list(ProcessExecutor(2).run(_threads, None, [0, 1, 2, 3], lambda i, m: None))
    assert torch.get_num_threads() == before
    assert all(threads == 1 for threads in seen)  # one per lane, here as in the worker
    assert list(SerialExecutor().run(_threads, None, [0], lambda i, m: None)) == [before]


def _threads(context: None, item: int) -> int:
    import torch

    return torch.get_num_threads()


def test_an_executor_needs_a_lane():
    with pytest.raises(ValueError):
        ProcessExecutor(0)
