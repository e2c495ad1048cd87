"""`make demo`: migrate, seed, and run web, worker, beat, the sandbox and demo traffic on the
embedded default (SQLite in WAL mode, the file broker under var/). Ctrl-C stops everything.

Runs before Django is configured: it writes var/demo.env (a secret key, a credentials key and the
demo password, generated once and kept) and hands that environment to every process it starts.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("PSCSYNC_VAR_DIR", ROOT / "var"))
BIN = Path(sys.executable).parent
WEB_PORT = int(os.environ.get("PSCSYNC_DEMO_PORT", "8000"))
ECHO_PORT = 8790
VENDOR_SANDBOXES = ("salesforce", "kantata", "netsuite", "businesscentral")


def demo_env() -> dict[str, str]:
    VAR.mkdir(parents=True, exist_ok=True)
    env_file = VAR / "demo.env"
    values: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name:
                values[name] = value
    values.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    values.setdefault("PSCSYNC_CREDENTIALS_KEYS", "demo1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    values.setdefault("DEMO_PASSWORD", secrets.token_urlsafe(12))
    if os.environ.get("DEMO_PASSWORD"):
        values["DEMO_PASSWORD"] = os.environ["DEMO_PASSWORD"]
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env_file.chmod(0o600)
    return {
        **os.environ,
        **values,
        "PSCSYNC_SECURE_COOKIES": "false",  # plain http on 127.0.0.1
        # Demo users sign in with a password only; every page shows a banner saying so
        # (docs/security.md). PSCSYNC_2FA_REQUIRED_ROLES=admin,operator tries the real thing.
        "PSCSYNC_2FA_REQUIRED_ROLES": os.environ.get("PSCSYNC_2FA_REQUIRED_ROLES", "none"),
        "PSCSYNC_SWEEP_SECONDS": "2",
        "PSCSYNC_POLL_SECONDS": "15",
        "PSCSYNC_RETRY_BASE_SECONDS": "3",
        "PSCSYNC_RECONCILE_SECONDS": os.environ.get("PSCSYNC_RECONCILE_SECONDS", "300"),
        "PSCSYNC_LOG_LEVEL": os.environ.get("PSCSYNC_LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


def main() -> None:
    env = demo_env()
    manage = [sys.executable, str(ROOT / "manage.py")]
    if len(env["DEMO_PASSWORD"]) < 12:
        sys.exit("DEMO_PASSWORD must be at least 12 characters")
    print("pscsync demo: migrating and seeding the demo firm ...", flush=True)
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)
    subprocess.run([*manage, "demo_seed", "--echo-url", f"http://127.0.0.1:{ECHO_PORT}"], env=env, cwd=ROOT, check=True)
    logs = VAR / "logs"
    logs.mkdir(exist_ok=True)
    commands = {
        "sandbox-echo": [*manage, "sandbox", "echo", "--port", str(ECHO_PORT)],
        **{f"sandbox-{name}": [*manage, "sandbox", name] for name in VENDOR_SANDBOXES},
        "web": [str(BIN / "gunicorn"), "pscsync.wsgi", "-b", f"127.0.0.1:{WEB_PORT}", "-w", "2", "--threads", "4"],
        "worker": [str(BIN / "celery"), "-A", "pscsync", "worker", "-c", "2", "-l", "WARNING", "--without-gossip"],
        "beat": [str(BIN / "celery"), "-A", "pscsync", "beat", "-l", "WARNING"],
        "traffic": [*manage, "demo_traffic", "--web", f"http://127.0.0.1:{WEB_PORT}"],
    }
    processes: dict[str, subprocess.Popen] = {}
    for name, argv in commands.items():
        log = (logs / f"{name}.log").open("ab")
        processes[name] = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        time.sleep(2.0 if name == "web" else 0.3)

    def stop(*_: object) -> None:
        print("\nstopping ...", flush=True)
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"""
pscsync is running: http://127.0.0.1:{WEB_PORT}/

  Sign in as viewer, operator or admin, password: {env["DEMO_PASSWORD"]}
  (set DEMO_PASSWORD to choose it; it is kept in var/demo.env)
  Two-factor sign-in is optional in the demo; any user can turn it on under /account/two-factor/.

  Running: web (gunicorn), Celery worker, Celery beat, demo traffic, and the sandboxes:
    echo :{ECHO_PORT} · salesforce (and Certinia) :8791 · kantata :8792 · netsuite :8793 · businesscentral :8794
  Database: var/pscsync.sqlite3 (SQLite, WAL) · broker: var/broker (files) · logs: var/logs/
  Press Ctrl-C to stop everything.
""",
        flush=True,
    )
    while True:
        time.sleep(1)
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; see var/logs/{name}.log", flush=True)
                stop()


if __name__ == "__main__":
    main()
