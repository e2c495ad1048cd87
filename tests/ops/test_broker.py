"""The embedded broker's transport (ops/broker.py): a message file is never visible half written."""

from __future__ import annotations

import json
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


def test_the_embedded_broker_keeps_every_folder_under_var(tmp_path, monkeypatch) -> None:
    """kombu's default control folder is `control` in the working directory: /app in the image,
    which its user cannot write, so the demo's worker died at start in the container. The settings
    put it under var/broker, and a message going through creates nothing in the working directory."""
    import json
    import subprocess

    from tests.helpers import PYTHON, ROOT

    var, workdir = tmp_path / "var", tmp_path / "workdir"
    workdir.mkdir()
    env = {**os.environ, "CELERY_BROKER_URL": "filesystem://", "PSCSYNC_VAR_DIR": str(var)}
    printed = subprocess.run(
        [
            PYTHON,
            "-c",
            "import json; from pscsync import settings; print(json.dumps(settings.CELERY_BROKER_TRANSPORT_OPTIONS))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    options = json.loads(printed.strip().splitlines()[-1])
    assert options["control_folder"] == str(var / "broker" / "control")
    monkeypatch.chdir(workdir)
    with Connection("filesystem://localhost/", transport="ops.broker:Transport", transport_options=options) as conn:
        queue = conn.SimpleQueue("sweeps")  # a queue of its own: kombu keeps bindings per process
        queue.put({"task": "sweep"})
        assert queue.get(timeout=10).payload == {"task": "sweep"}
        queue.close()
    assert list(workdir.iterdir()) == []
    assert (var / "broker" / "control").is_dir()


def test_a_batch_routed_on_the_embedded_broker_is_a_few_messages_too(tmp_path) -> None:
    """Without Redis the messages go through Celery's apply_async one by one (_publish_each): a
    batch of five due handoffs with two workers to wake is two messages, naming the 1st and the
    3rd; a wake names none (0)."""
    import subprocess

    from tests.helpers import PYTHON, ROOT

    script = """
import base64, json, pathlib, django
django.setup()
from pscsync import dispatch
dispatch.handoffs_publish([11, 12, 13, 14, 15], due=True)
dispatch.handoffs_wake()
args = []
for path in pathlib.Path("%s/broker/queue").glob("*.msg"):
    message = json.loads(path.read_text())
    args.append(json.loads(base64.b64decode(message["body"]))[0])
print(json.dumps(args))
""" % (tmp_path / "var")
    env = {
        **os.environ,
        "CELERY_BROKER_URL": "filesystem://",
        "PSCSYNC_VAR_DIR": str(tmp_path / "var"),
        "PSCSYNC_WAKE_WORKERS": "2",
        "DJANGO_SETTINGS_MODULE": "pscsync.settings",
    }
    printed = subprocess.run(
        [PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert sorted(json.loads(printed.strip().splitlines()[-1])) == [[0], [11], [13]]
