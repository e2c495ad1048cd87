"""`make demo` under a supervisor: SIGTERM stops every process it started within 10 s (systemd and
container runtimes send SIGKILL after a grace period, which would orphan whatever is left), and a
taken port is named with the variable that moves it, before anything starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tests.helpers import ROOT, free_port


def _demo_env(tmp_path, web_port: int) -> dict[str, str]:
    # The embedded set-up (SQLite, file broker), as `make demo` runs on a bare machine.
    drop = {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "SECRET_KEY", "PSCSYNC_CREDENTIALS_KEYS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # Sandboxes on 18790.. plus a per-run shift, clear of a running demo and below the kernel's
    # ephemeral range (32768..): a client socket's local port there once made the demo refuse to start.
    offset = 10000 + os.getpid() % 13000
    return {
        **env,
        "PSCSYNC_DEMO_PORT": str(web_port),
        "PSCSYNC_SANDBOX_PORT_OFFSET": str(offset),
        "PSCSYNC_VAR_DIR": str(tmp_path),
        "PSCSYNC_DEMO_DAYS": "1",
    }


def _started_by(pid: int) -> list[int]:
    """Every process in the sessions the demo started (each child leads its own session)."""
    rows = [
        line.split()
        for line in subprocess.run(["ps", "-eo", "pid=,ppid=,sid="], capture_output=True, text=True).stdout.splitlines()
    ]
    leaders = {r[0] for r in rows if r[1] == str(pid)}
    return [int(r[0]) for r in rows if r[2] in leaders]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_every_process_the_demo_started_within_10_seconds(tmp_path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo"],
        env=_demo_env(tmp_path, free_port()),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = demo.stdout.readline()
        assert first.startswith("pscsync demo: http://127.0.0.1:"), first  # the address and logins come first
        assert "password:" in demo.stdout.readline()
        for line in demo.stdout:
            if "Press Ctrl-C" in line:
                break
        time.sleep(3)  # let gunicorn and Celery fork their children
        started = _started_by(demo.pid)
        assert len(started) >= 9, started  # 5 sandboxes, gunicorn and its workers, worker, beat, firm
        stopping = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        while any(_alive(pid) for pid in started) and time.monotonic() - stopping < 15:
            time.sleep(0.1)
        took = time.monotonic() - stopping
        assert not [pid for pid in started if _alive(pid)], f"still running after {took:.1f} s"
        assert took < 10
        assert demo.wait(timeout=5) == 0
    finally:
        if demo.poll() is None:
            demo.kill()


def test_a_taken_port_is_named_with_the_variable_that_moves_it(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "demo"],
            env=_demo_env(tmp_path, port),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} (the web app) is taken by another program; set PSCSYNC_DEMO_PORT to move it" in result.stderr
    assert not (tmp_path / "pscsync.sqlite3").exists()  # nothing was started or migrated
