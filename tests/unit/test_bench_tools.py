"""The benches' own measuring tools: per-thread CPU from /proc, py-spy's thread names, and the
Firestore write counter that bench/batch.py puts in every process of its stack."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import Counter
from types import ModuleType

from google.cloud.firestore_v1.types import write as write_types

from bench.common import (
    CLOCK_TICKS,
    ROOT,
    _stat_cpu_s,
    parse_py_spy_dump,
    split_cpu,
    thread_group,
    threads_cpu_s,
)


def load_writecount() -> ModuleType:
    path = ROOT / "bench" / "writecount" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("bench_writecount", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    fields = ["S"] + ["0"] * 10 + [str(3 * CLOCK_TICKS), str(CLOCK_TICKS)] + ["0"] * 30
    name, cpu = _stat_cpu_s("1234 (omni (run) x) " + " ".join(fields))
    assert name == "omni (run) x"
    assert cpu == 4.0


def test_threads_of_this_process_include_a_named_one() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="bench-probe")
    thread.start()
    try:
        threads = threads_cpu_s(os.getpid())
        assert thread.native_id in threads
        assert all(cpu >= 0 for _, cpu in threads.values())
    finally:
        release.set()
        thread.join()


def test_py_spy_dump_names() -> None:
    dump = (
        "Process 10: python -m worker\nPython v3.11.7\n\n"
        'Thread 10 (idle): "MainThread"\n    wait (threading.py:320)\n'
        'Thread 0x1F (active): "omni-run-embed"\n'
        'Thread 12 (idle): "omni-settle_3"\n'
    )
    assert parse_py_spy_dump(dump) == {10: "MainThread", 31: "omni-run-embed", 12: "omni-settle_3"}


def test_pools_group_under_one_name() -> None:
    assert thread_group("omni-settle_3") == "omni-settle"
    assert thread_group("omni-callback_12") == "omni-callback"
    assert thread_group("omni-run-embed") == "omni-run-embed"
    assert thread_group("123") == "123"


def test_split_names_groups_and_counts_ended_threads() -> None:
    before = {1: ("python", 1.0), 2: ("python", 0.5), 3: ("grpc_global_tim", 0.0)}
    after = {1: ("python", 3.0), 2: ("python", 1.5), 3: ("grpc_global_tim", 0.25), 4: ("python", 1)}
    names = {1: "omni-run-embed", 2: "omni-settle_0", 4: "omni-settle_1"}
    rows = split_cpu(before, after, names, total_s=5.0)
    assert rows[0] == ("omni-run-embed", 2.0, 1)
    assert ("omni-settle", 2.0, 2) in rows
    assert ("grpc_global_tim", 0.25, 1) in rows
    assert ("(ended threads, rounding)", 0.75, 0) in rows


def test_write_counter_counts_documents_by_collection() -> None:
    module = load_writecount()
    root = "projects/p/databases/(default)/documents/"
    chunk = write_types.Write(update={"name": root + "batches/b1/chunks/0000000000"})
    shard = write_types.Write(update={"name": root + "batches/b1/counters/3"})
    gone = write_types.Write(delete=root + "batches/b1/chunks/0000000256")
    module._count({"database": "x", "writes": [chunk, shard, gone, chunk]})
    assert module._counts == Counter(
        {
            "batches/chunks": 2,
            "batches/counters": 1,
            "batches/chunks (delete)": 1,
            "(commits)": 1,
        }
    )
    assert module._collections(root + "jobs/j1") == "jobs"
