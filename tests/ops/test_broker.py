"""The embedded broker's transport (ops/broker.py): a message file is never visible half written."""

from __future__ import annotations

import os

from kombu import Connection

from ops import broker


def _connection(folder) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://localhost/", transport="ops.broker:Transport", transport_options=options)


def test_a_message_goes_through_whole(tmp_path) -> None:
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        queue.put({"task": "reconcile", "args": [1, "two"]})
        assert queue.get(timeout=1).payload == {"task": "reconcile", "args": [1, "two"]}
        queue.close()


def test_no_reader_can_take_the_file_before_it_is_written(tmp_path, monkeypatch) -> None:
    """At the moment the message is renamed into place, its bytes are all written and no '.msg'
    file of it was there before: a worker listing the folder sees it whole or not at all."""
    seen: list[tuple[list[str], int]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append((sorted(n for n in os.listdir(tmp_path) if n.endswith(".msg")), os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", replace)
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        queue.put({"body": "x" * 5000})
        (before, size) = seen[0]
        assert before == [] and size > 5000
        assert queue.get(timeout=1).payload == {"body": "x" * 5000}
        queue.close()
