"""`make demo`: migrate, seed, and run web, worker, beat, the vendor sandboxes and the demo firm
on the embedded default (SQLite in WAL mode, the file broker under var/). Ctrl-C stops everything.

The demo firm (`manage.py simulate`, docs/demo-firm.md) first lives through the last
PSCSYNC_DEMO_DAYS days (90) in a few minutes, steering every process's clock through the shared
clock file var/clock.json, then goes on in real time (a live trickle). The history is simulated
once; a later `make demo` only continues the trickle (delete var/ to start afresh).

Ports: web PSCSYNC_DEMO_PORT (8000); sandboxes 8790-8796 plus PSCSYNC_SANDBOX_PORT_OFFSET, so a
second demo can run beside the first.

Runs before Django is configured: it writes var/demo.env (a secret key, a credentials key and the
demo password, generated once and kept) and hands that environment to every process it starts.
"""

from __future__ import annotations

import base64
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("PSCSYNC_VAR_DIR", ROOT / "var"))
BIN = Path(sys.executable).parent
WEB_PORT = int(os.environ.get("PSCSYNC_DEMO_PORT", "8000"))
# 0.0.0.0 only inside a container (compose.yaml's demo profile), where the port is published.
WEB_HOST = os.environ.get("PSCSYNC_DEMO_HOST", "127.0.0.1")
PORT_OFFSET = int(os.environ.get("PSCSYNC_SANDBOX_PORT_OFFSET", "0") or 0)
ECHO_PORT = 8790 + PORT_OFFSET
DEMO_DAYS = int(os.environ.get("PSCSYNC_DEMO_DAYS", "90"))
# Wall seconds per simulated day (at least). On a loaded machine the engine falls behind the firm
# at 2 s a day (a week's time waits for its project, then is given up): give it more.
DAY_SECONDS = os.environ.get("PSCSYNC_DEMO_DAY_SECONDS", "2")
# In port order from 8791: the German entity's own Kantata account is the second Kantata sandbox.
VENDOR_SANDBOXES = ("salesforce", "kantata", "netsuite", "businesscentral", "dynamicsfinance", "kantata-de")
# Container runtimes and systemd send SIGTERM and SIGKILL a few seconds later (often 5 or 10 s): the
# demo stops its processes with SIGTERM, waits this long, then kills what is left.
STOP_GRACE_SECONDS = 4.0


def ports_taken() -> list[str]:
    """The ports the demo needs that another program holds, each with the variable that moves it."""
    sandboxes = ("echo", *VENDOR_SANDBOXES)  # on 8790, 8791, ... in this order (connectors.sandboxes)
    wanted = [(WEB_PORT, "the web app", "PSCSYNC_DEMO_PORT")] + [
        (ECHO_PORT + i, f"the {name} sandbox", "PSCSYNC_SANDBOX_PORT_OFFSET") for i, name in enumerate(sandboxes)
    ]
    taken = []
    for port, what, variable in wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"port {port} ({what}) is taken by another program; set {variable} to move it")
    return taken


def _die_with_the_demo() -> None:
    """Runs in each child before exec: if the demo itself is killed (SIGKILL after a grace period),
    the kernel sends the child SIGTERM, so nothing it started outlives it (Linux prctl)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def demo_env() -> dict[str, str]:
    (VAR / "logs").mkdir(parents=True, exist_ok=True)
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
        # The demo's connections point at the sandboxes on loopback; production leaves this off.
        "PSCSYNC_ALLOW_SANDBOXES": "true",
        # One business clock for web, worker and beat, steered by the simulated firm.
        "PSCSYNC_CLOCK": os.environ.get("PSCSYNC_CLOCK", f"file:{VAR / 'clock.json'}"),
        "PSCSYNC_SANDBOX_PORT_OFFSET": str(PORT_OFFSET),
        # Demo users sign in with a password only; every page shows a banner saying so
        # (docs/security.md). PSCSYNC_2FA_REQUIRED_ROLES=admin,operator tries the real thing.
        "PSCSYNC_2FA_REQUIRED_ROLES": os.environ.get("PSCSYNC_2FA_REQUIRED_ROLES", "none"),
        "PSCSYNC_SWEEP_SECONDS": "2",
        "PSCSYNC_POLL_SECONDS": "15",
        "PSCSYNC_RETRY_BASE_SECONDS": "3",
        "PSCSYNC_RECONCILE_SECONDS": os.environ.get("PSCSYNC_RECONCILE_SECONDS", "300"),
        "PSCSYNC_LOG_LEVEL": os.environ.get("PSCSYNC_LOG_LEVEL", "WARNING"),
        "PSCSYNC_LOG_FORMAT": os.environ.get("PSCSYNC_LOG_FORMAT", "text"),  # JSON is for machines
        # The audit trail's external copy goes to its own file, not over the terminal.
        "PSCSYNC_AUDIT_LOG_FILE": os.environ.get("PSCSYNC_AUDIT_LOG_FILE", str(VAR / "logs" / "audit.log")),
        "PYTHONUNBUFFERED": "1",
    }


ENGINE = ("web", "worker", "beat")


def history_env(env: dict[str, str]) -> dict[str, str]:
    """The engine's settings while the firm runs through its history at ~43 000x: the lease, the
    re-publish delay and the retry backoff are read on the business clock, so they are set in
    business days and hours (a few wall seconds), and beat polls every 5 s. Once the history is
    done the engine restarts with the real-time settings."""
    return {
        **env,
        "PSCSYNC_LEASE_SECONDS": str(3 * 86400),
        "PSCSYNC_REDISPATCH_SECONDS": str(10 * 86400),
        "PSCSYNC_RETRY_BASE_SECONDS": "1800",
        "PSCSYNC_POLL_SECONDS": "5",
        "PSCSYNC_DEMAND_SNAPSHOT_SECONDS": "5",  # 7 business days pass in ~14 wall seconds here
    }


def stop_all(processes: dict[str, subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every process group we started, wait up to `grace` seconds in all, SIGKILL the rest."""
    for process in processes.values():
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for process in processes.values():
        try:
            process.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # the whole group: a gunicorn or Celery child left behind by its parent goes too
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.wait(timeout=5)


def main() -> None:
    env = demo_env()
    manage = [sys.executable, str(ROOT / "manage.py")]
    if len(env["DEMO_PASSWORD"]) < 12:
        sys.exit("DEMO_PASSWORD must be at least 12 characters")
    taken = ports_taken()
    if taken:
        sys.exit("pscsync demo cannot start:\n  " + "\n  ".join(taken))
    simulated = VAR / "simulated"
    print(
        f"""pscsync demo: http://127.0.0.1:{WEB_PORT}/ once started
  Sign in as viewer, operator or admin, password: {env["DEMO_PASSWORD"]}
  (set DEMO_PASSWORD to choose it; it is kept in var/demo.env)
"""
        + (
            ""
            if simulated.exists()
            else f"  The first start simulates the firm's last {DEMO_DAYS} days: that takes a few minutes.\n"
        ),
        flush=True,
    )
    processes: dict[str, subprocess.Popen] = {}

    def stop(*_: object) -> None:
        print("\nstopping ...", flush=True)
        stop_all(processes)
        sys.exit(0)

    # Handlers first: a SIGTERM during migrate or seeding stops cleanly too.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print("pscsync demo: migrating and seeding the demo firm ...", flush=True)
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)
    # Pages name static files by content hash (the manifest collectstatic writes); see settings.
    subprocess.run([*manage, "collectstatic", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)
    subprocess.run([*manage, "demo_seed", "--echo-url", f"http://127.0.0.1:{ECHO_PORT}"], env=env, cwd=ROOT, check=True)
    logs = VAR / "logs"
    logs.mkdir(exist_ok=True)
    commands = {
        "sandbox-echo": [*manage, "sandbox", "echo", "--port", str(ECHO_PORT)],
        **{f"sandbox-{name}": [*manage, "sandbox", name] for name in VENDOR_SANDBOXES},
        "web": [str(BIN / "gunicorn"), "pscsync.wsgi", "-b", f"{WEB_HOST}:{WEB_PORT}", "-w", "2", "--threads", "4"],
        "worker": [str(BIN / "celery"), "-A", "pscsync", "worker", "-c", "2", "-l", "WARNING", "--without-gossip"],
        "beat": [str(BIN / "celery"), "-A", "pscsync", "beat", "-l", "WARNING"],
    }
    web_url = f"http://127.0.0.1:{WEB_PORT}"
    if os.environ.get("PSCSYNC_DEMO_ECHO_TRAFFIC", "") in ("1", "true"):
        commands["traffic"] = [*manage, "demo_traffic", "--web", web_url, "--echo-url", f"http://127.0.0.1:{ECHO_PORT}"]
    history = [] if simulated.exists() else ["--days", str(DEMO_DAYS)]
    commands["firm"] = [
        *manage,
        "simulate",
        *(history or ["--skip-history"]),
        "--seed",
        os.environ.get("PSCSYNC_DEMO_SEED", "7"),
        "--web",
        web_url,
        "--day-seconds",
        DAY_SECONDS,
        "--trickle",
        "--done-marker",
        str(simulated),
    ]
    fast = history_env(env) if history else env

    def start(name: str, process_env: dict[str, str]) -> None:
        log = (logs / f"{name}.log").open("ab")
        processes[name] = subprocess.Popen(
            commands[name],
            env=process_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_the_demo,  # safe here: the demo runner starts no threads
        )

    for name in commands:
        start(name, fast if name in ENGINE else env)
        time.sleep(2.0 if name == "web" else 0.3)
        if name == "beat":
            # The sandboxes push to pscsync's webhooks (Salesforce, Business Central); both Kantata
            # accounts, NetSuite and Dynamics 365 Finance are polled by beat.
            subprocess.run([*manage, "demo_subscribe", "--web", web_url], env=env, cwd=ROOT, check=False)

    # What the processes were given: the embedded default unless DATABASE_URL / CELERY_BROKER_URL say otherwise.
    database = "PostgreSQL (DATABASE_URL)" if env.get("DATABASE_URL") else f"{VAR / 'pscsync.sqlite3'} (SQLite, WAL)"
    broker = "CELERY_BROKER_URL" if env.get("CELERY_BROKER_URL") else f"{VAR / 'broker'} (files)"
    firm_note = (
        f"is living through the last {DEMO_DAYS} days (a few minutes; see var/logs/firm.log), then"
        if history
        else "continues:"
    )
    print(
        f"""
pscsync is running: http://127.0.0.1:{WEB_PORT}/

  Sign in as viewer, operator or admin, password: {env["DEMO_PASSWORD"]}
  (set DEMO_PASSWORD to choose it; it is kept in var/demo.env)
  Two-factor sign-in is optional in the demo; any user can turn it on under /account/two-factor/.

  Running: web (gunicorn), Celery worker, Celery beat, the demo firm, and the sandboxes:
    echo :{ECHO_PORT} · salesforce (and Certinia) :{8791 + PORT_OFFSET} · kantata :{8792 + PORT_OFFSET}
    · netsuite :{8793 + PORT_OFFSET} · businesscentral :{8794 + PORT_OFFSET} · dynamicsfinance :{8795 + PORT_OFFSET}
    · kantata (the German account) :{8796 + PORT_OFFSET}
  The demo firm {firm_note}
  new activity every few seconds, in real time.
  Database: {database} · broker: {broker} · logs: {logs}/
  Press Ctrl-C to stop everything.
""",
        flush=True,
    )
    while True:
        time.sleep(1)
        if history and simulated.exists():
            history = []
            print("the demo firm's history is done: the engine goes on in real time", flush=True)
            for name in ENGINE:
                stop_all({name: processes[name]}, grace=15)
                start(name, env)
                time.sleep(2.0 if name == "web" else 0.3)
            # The firm's nightly reconciliation, once the engine has caught up with the history's
            # queue (beat's first turn is a schedule away, and a record still queued is no
            # mismatch): the overview's unbilled WIP, mismatches and money at risk are then measured.
            commands["reconcile"] = [*manage, "reconcile", "--after-backlog", "600"]
            start("reconcile", env)
        for name, process in list(processes.items()):
            if process.poll() is not None:
                if name == "reconcile" and process.returncode == 0:
                    del processes[name]
                    continue
                print(f"{name} exited with {process.returncode}; see {logs / (name + '.log')}", flush=True)
                if name in ("firm", "reconcile"):  # the rest of the demo works without them
                    del processes[name]
                    continue
                stop()


if __name__ == "__main__":
    main()
