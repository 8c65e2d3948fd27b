"""Heartbeat files and the one-trainer-per-workdir lease.

A heartbeat file is a small JSON record (host, pid, start time, heartbeat time, and any payload) that a
daemon thread rewrites atomically every few seconds. Training holds `WORKDIR/trainer.lease`, taken before
it writes anything: a second trainer is refused naming the holder, and a stale lease (its pid is dead on
this host, or no heartbeat for `STALE_SECONDS`) is taken over with a warning. The evaluation watcher
publishes its progress the same way (`comm_jax.retention`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable

from comm_jax.cli_errors import ProgramError

LEASE_FILE = "trainer.lease"
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0   # twelve missed heartbeats: the holder is gone (or frozen) on another host

log = logging.getLogger("comm_jax.lease")


class LeaseHeld(ProgramError):
    """Another live trainer holds the workdir."""


def read_record(path: str) -> dict[str, Any] | None:
    """The record in a heartbeat file, or None when it is absent or unreadable (being replaced)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by another user
        return True
    return True


def is_live(record: dict[str, Any] | None, stale_after: float = STALE_SECONDS, now: float | None = None) -> bool:
    """Whether the writer of `record` is alive: its pid runs (when on this host) and its last heartbeat is
    less than `stale_after` seconds old."""
    if not record:
        return False
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return False
    return (time.time() if now is None else now) - float(record.get("heartbeat", 0)) < stale_after


def describe_holder(record: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    age = time.time() - float(record.get("heartbeat", 0))
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {started}, "
            f"last heartbeat {age:.0f}s ago")


def _write_atomically(path: str, record: dict[str, Any]) -> None:
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(temporary, "w") as f:
        json.dump(record, f)
    os.replace(temporary, path)


class HeartbeatFile:
    """Keeps `path` holding {host, pid, started, heartbeat, token, **payload()} while running."""

    def __init__(self, path: str, payload: Callable[[], dict[str, Any]] = dict,
                 interval: float = HEARTBEAT_SECONDS):
        self.path, self.payload, self.interval = path, payload, interval
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time(), "token": self.token, **self.payload()}

    def owned(self) -> bool:
        return (read_record(self.path) or {}).get("token") == self.token

    def beat(self) -> None:
        _write_atomically(self.path, self.record())

    def start(self) -> "HeartbeatFile":
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{self.path}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.owned():
                    log.warning("%s was taken over by another process; no longer refreshing it", self.path)
                    return
                self.beat()
            except OSError as error:   # a full or vanished disk: the program reports it on its own writes
                log.warning("could not refresh %s: %s", self.path, error)

    def stop(self, remove: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if remove and self.owned():
            try:
                os.remove(self.path)
            except OSError:
                pass


def lease_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), LEASE_FILE)


def live_trainer(workdir: str, stale_after: float = STALE_SECONDS) -> dict[str, Any] | None:
    """The lease record of a live trainer of `workdir`, or None."""
    record = read_record(lease_path(workdir))
    return record if is_live(record, stale_after) else None


def acquire(workdir: str, *, stale_after: float = STALE_SECONDS,
            interval: float = HEARTBEAT_SECONDS) -> HeartbeatFile:
    """Takes the trainer lease of `workdir` (creating the directory) and starts its heartbeat; raises
    LeaseHeld naming the holder when a live trainer has it."""
    os.makedirs(os.path.abspath(workdir), exist_ok=True)
    path = lease_path(workdir)
    lease = HeartbeatFile(path, interval=interval)
    temporary = f"{path}.{lease.token}.tmp"
    with open(temporary, "w") as f:
        json.dump(lease.record(), f)
    try:
        os.link(temporary, path)        # atomic: fails when a lease file exists
        return lease.start()
    except FileExistsError:
        pass
    finally:
        os.remove(temporary)
    holder = read_record(path)
    if holder is not None and is_live(holder, stale_after):
        raise LeaseHeld(f"{workdir} is in use by another trainer ({describe_holder(holder)}); wait for it to "
                        f"finish or stop it, or use another --workdir (the lease is {path})")
    print(f"warning: taking over the stale trainer lease {path} "
          f"({describe_holder(holder) if holder else 'unreadable record'})", file=sys.stderr, flush=True)
    lease.beat()
    time.sleep(min(0.2, interval))     # two takeovers at once: the last write wins, the other is refused
    current = read_record(path)
    if not current or current.get("token") != lease.token:
        raise LeaseHeld(f"{workdir} was taken over by another trainer at the same moment "
                        f"({describe_holder(current or {})}); use another --workdir")
    return lease.start()
