"""The judge's annotation cache with several writers at once (fan-out shards): processes and threads appending
large entries to one file lose nothing and corrupt nothing; a torn tail from a crash is still tolerated."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from silkfire.vlfeedback.cache import CACHE_FILE, AnnotationCache

ENTRIES = 40
TEXT_BYTES = 70_000  # far above the 8 KiB a buffered text write goes out in: one entry = several write() calls


def entry(writer: str, index: int) -> dict:
    filler = f"{writer}-{index} " * (TEXT_BYTES // (len(writer) + 8))
    return {"key": f"{writer}/{index}", "id": f"{writer}-{index}", "model": "judge", "text": filler,
            "prompt_tokens": index, "completion_tokens": 2 * index}


def write_many(directory: str, writer: str) -> None:
    cache = AnnotationCache(directory)  # each writer its own instance, as each shard builds its own judge
    for index in range(ENTRIES):
        cache.put(entry(writer, index))


def check(directory: Path, writers: list[str]) -> None:
    lines = (directory / CACHE_FILE).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # every line is one whole entry
    loaded = AnnotationCache(directory)
    assert loaded.torn_lines == 0 and len(loaded) == len(writers) * ENTRIES
    for writer in writers:
        for index in range(ENTRIES):
            assert loaded.get(f"{writer}/{index}") == entry(writer, index)


def test_processes_append_at_once_without_losing_or_tearing_entries(tmp_path: Path) -> None:
    writers = [f"proc{n}" for n in range(4)]
    # fresh interpreters (not fork: a process forked from a test session with a Prefect server in it can break)
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_cache_concurrency import write_many; write_many(sys.argv[1], sys.argv[2])")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), writer]) for writer in writers]
    assert [process.wait(60) for process in processes] == [0] * len(writers)
    check(tmp_path, writers)


def test_threads_with_their_own_instances_and_a_torn_tail(tmp_path: Path) -> None:
    first = AnnotationCache(tmp_path)
    first.put(entry("before", 0))
    with (tmp_path / CACHE_FILE).open("ab") as handle:
        handle.write(b'{"key": "crashed", "text": "half a rep')  # a crash mid-write
    writers = [f"thread{n}" for n in range(4)]
    threads = [threading.Thread(target=write_many, args=(str(tmp_path), writer)) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    loaded = AnnotationCache(tmp_path)
    assert loaded.torn_lines == 1 and "crashed" not in loaded  # the torn line alone is dropped ...
    assert loaded.get("before/0") == entry("before", 0)
    for writer in writers:  # ... and no new entry was glued onto it
        assert all(loaded.get(f"{writer}/{index}") == entry(writer, index) for index in range(ENTRIES))
    assert len(loaded) == 1 + len(writers) * ENTRIES
