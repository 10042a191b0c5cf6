"""Several processes serving one port: a supervisor and its workers (`--processes N`).

A sync grpcio server runs its Python code under one GIL, so one process uses about one core.
`supervise` runs N workers instead, each a fresh interpreter (multiprocessing "spawn": no gRPC
object crosses a fork) that builds its own server on the same port with SO_REUSEPORT; the
kernel spreads new connections over them. The supervisor itself serves no gRPC:

- Port: before any worker starts it checks the port is free (a bind without SO_REUSEPORT, which
  fails against any socket on it, another recsys's included) and then holds it with a bound,
  non-listening SO_REUSEPORT socket until it exits, so the same check fails for every program
  started later, and port 0 becomes one concrete free port the workers share.
- Health (`WorkerSlot`, `recsys.grpc_server.PeerHealth`): each worker writes its own state
  (starting, SERVING, not SERVING) into a shared byte array; every worker's health answers
  SERVING only while all N slots say SERVING, so a probe gets the same answer from any worker.
- A worker that exits after it has served is restarted (logged; the server is NOT_SERVING until
  the new one is ready). A worker that exits before it ever served (a bad artifact, a busy
  port) stops the whole server: `supervise` raises `StartupFailed` with the worker's error
  message (restarting would only fail again).
- Metrics: workers write prometheus-client's multiprocess files into a fresh private directory
  (PROMETHEUS_MULTIPROC_DIR, in the workers' environment only, so it is there before they import
  prometheus_client); the supervisor alone serves `--metrics-port`, summing the workers
  (`recsys.metrics.supervisor_registry`), and removes the directory on exit.
- SIGTERM or SIGINT: every worker gets SIGTERM and drains for its grace period; exit 0 once they
  all stopped. Workers run in their own process group (a terminal's Ctrl-C reaches only the
  supervisor) and get SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

__all__ = [
    "MAX_DEFAULT_PROCESSES",
    "StartupFailed",
    "WorkerSlot",
    "available_cores",
    "default_processes",
    "remember_logging",
    "reserve_port",
    "resolve_processes",
    "supervise",
    "threads_per_process",
]

log = logging.getLogger(__name__)

MAX_DEFAULT_PROCESSES = 8
STARTING, SERVING, NOT_SERVING = 0, 1, 2  # a worker's slot on the board
_LOGGING_ENV = "RECSYS_WORKER_LOGGING"  # how the CLI's logging flags reach spawned workers
_PR_SET_PDEATHSIG = 1


class StartupFailed(RecsysError):
    """A worker stopped before it served; the message is the worker's own error."""


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit, rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 CPU controller here
        pass
    return max(1, cores)


def default_processes(cores: int | None = None) -> int:
    """One process per core, at most `MAX_DEFAULT_PROCESSES`."""
    return max(1, min(cores or available_cores(), MAX_DEFAULT_PROCESSES))


def resolve_processes(requested: int | None, *, single: str | None = None) -> int:
    """`requested`, or the default for None: `default_processes()`, or 1 where `single` says why
    this configuration needs one process. ValueError for `requested` < 1, or > 1 with `single`."""
    if requested is None:
        return 1 if single else default_processes()
    if requested < 1:
        raise ValueError(f"--processes must be >= 1, got {requested}")
    if requested > 1 and single:
        raise ValueError(f"--processes {requested}: {single}; run one process (--processes 1)")
    return requested


def threads_per_process(threads: int, processes: int, cores: int | None = None) -> int:
    """`threads` capped so that `processes` x threads <= cores (at least 1 per process)."""
    return max(1, min(threads, (cores or available_cores()) // processes))


def remember_logging(**options: Any) -> None:
    """Records `recsys.logs.configure`'s keywords for the workers (spawned interpreters start
    with no logging set up)."""
    os.environ[_LOGGING_ENV] = json.dumps(options)


class WorkerSlot:
    """One worker's place on the supervisor's board (`recsys.grpc_server.Peers`): one byte per
    worker, then the supervisor's own (SERVING once it has announced the port, so a client that
    saw SERVING can rely on the announcement having been printed)."""

    def __init__(self, board, index: int) -> None:
        self.board = board  # multiprocessing shared bytes: N workers + the supervisor
        self.index = index

    @property
    def count(self) -> int:
        """Workers on the port."""
        return len(self.board) - 1

    def report(self, serving: bool) -> None:
        """Until its first SERVING a worker stays STARTING (one that dies then is a failed start)."""
        if serving:
            self.board[self.index] = SERVING
        elif self.board[self.index] != STARTING:
            self.board[self.index] = NOT_SERVING

    def all_serving(self) -> bool:
        return all(state == SERVING for state in self.board[:])


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Checks that `port` is free on every address `host` names and holds it (see the module
    docstring); returns the holding sockets and the port (a free one for 0). OSError naming the
    address when it is busy."""
    name = host.strip("[]") or "::"
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address[0]) for family, _, _, _, address in infos))
    held: list[socket.socket] = []
    try:
        for family, address in addresses:
            check = _socket(family, reuse_port=False)
            try:
                check.bind((address, port))
            except OSError as exc:
                raise OSError(exc.errno, f"port {port} on {host} is busy (another server holds it)") from None
            finally:
                check.close()
            hold = _socket(family, reuse_port=True)
            hold.bind((address, port))
            held.append(hold)
            port = port or hold.getsockname()[1]  # port 0: the rest of the addresses take this one
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, port


def _socket(family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:  # as gRPC binds "[::]": IPv4 too on dual-stack hosts
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if reuse_port:  # the holder: worker sockets (SO_REUSEPORT) may join it, nothing else may
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    else:  # the check: ignores connections in TIME_WAIT, fails against any bound socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _worker_main(target: Callable[[Any, WorkerSlot], None], config: Any, slot: WorkerSlot, errors) -> None:
    os.setpgrp()  # the terminal's Ctrl-C goes to the supervisor, which drains the workers
    with contextlib.suppress(OSError, AttributeError):  # Linux only: stop with the supervisor
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    options = os.environ.get(_LOGGING_ENV)
    if options:
        from recsys.logs import configure

        configure(**json.loads(options))
    try:
        target(config, slot)
    except Exception as exc:
        errors.put((slot.index, str(exc) or type(exc).__name__))
        if not _expected(exc):  # a bug: its traceback goes to the log
            raise
        sys.exit(1)  # the supervisor reports the message once


def _expected(exc: Exception) -> bool:
    """Errors the CLI reports in one line (bad input, a busy port), as it does for one process."""
    errors = sys.modules.get("recsys.errors")
    return isinstance(exc, ValueError | OSError) or (errors is not None and isinstance(exc, errors.RecsysError))


def supervise(
    target: Callable[[Any, WorkerSlot], None],
    config: Any,
    processes: int,
    *,
    name: str,
    grace_s: float = 10.0,
) -> int:
    """Runs `target(config, slot)` in `processes` workers on `config.port` until SIGTERM/SIGINT
    (see the module docstring); returns the exit code: 0 after a drain, 1 when a worker did not
    stop within `grace_s` + 5 s. `config` is a dataclass with `host`, `port`, `metrics_port` and
    `metrics_host`; the workers get it with the reserved port and without a metrics port.
    OSError when the port is busy, `StartupFailed` when a worker stopped before serving."""
    held, port = reserve_port(config.host, config.port)
    metrics_dir = tempfile.mkdtemp(prefix="recsys-metrics-")
    # What the workers' environment adds to this process's (set around each start only, so the
    # supervisor's own prometheus_client stays single-process): the metrics directory, before
    # any worker imports prometheus_client (it picks its multiprocess mode at import), and one
    # pseudonym key for every worker, so a user's log reference is the same whoever served.
    worker_env = {"PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if not os.environ.get("RECSYS_LOG_KEY"):
        worker_env["RECSYS_LOG_KEY"] = secrets.token_hex(32)
    context = multiprocessing.get_context("spawn")
    board = context.RawArray("b", processes + 1)  # see WorkerSlot
    errors = context.SimpleQueue()  # (worker index, message) from a worker that failed
    worker_config = dataclasses.replace(config, port=port, metrics_port=None)

    def start(index: int):
        process = context.Process(
            target=_worker_main,
            args=(target, worker_config, WorkerSlot(board, index), errors),
            name=f"{name} worker {index}",
        )
        with _environment(worker_env):  # a spawned process starts with os.environ as it is now
            process.start()
        log.debug("%s: worker %d started (pid %d)", name, index, process.pid)
        return process

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: draining %d workers for up to %.0f s", signal.Signals(signum).name, processes, grace_s)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    failure: str | None = None
    messages: dict[int, str] = {}
    http = None
    workers = []
    try:
        workers = [start(i) for i in range(processes)]
        if config.metrics_port is not None:
            from recsys.metrics import serve_registry, supervisor_registry

            registry = supervisor_registry(metrics_dir, lambda: [w.pid for w in workers if w.is_alive()])
            http = serve_registry(registry, config.metrics_port, config.metrics_host or config.host)
        announced = False
        while not stop.is_set():
            if not announced and all(state == SERVING for state in board[:processes]):
                announced = True
                metrics = f", metrics on :{http.server_port}" if http is not None else ""
                pids = ", ".join(str(w.pid) for w in workers)
                log.info(
                    "%s: %d workers serving on %s:%d (pids %s)%s", name, processes, config.host, port, pids, metrics
                )
                print(f"{name} listening on {config.host}:{port} ({processes} processes{metrics})", flush=True)
                board[processes] = SERVING
            for index, process in enumerate(workers):
                if process.is_alive():
                    continue
                served = board[index] != STARTING
                board[index] = STARTING
                _mark_dead(process.pid, metrics_dir)
                while not errors.empty():
                    worker, message = errors.get()
                    messages[worker] = message
                why = messages.pop(index, f"exit code {process.exitcode}")
                if not served:
                    failure = why
                    stop.set()
                    break
                workers[index] = start(index)
                log.warning(
                    "%s: worker %d (pid %d) exited (%s): restarted as pid %d",
                    name, index, process.pid, why, workers[index].pid,
                )  # fmt: skip
            stop.wait(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for process in workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker drains for its grace period
        for process in workers:
            process.join(grace_s + 5.0)
            if process.is_alive():
                log.error("%s: worker pid %d did not stop in time: killed", name, process.pid)
                process.kill()
                process.join()
                code = 1
        if http is not None:
            http.shutdown()
            http.server_close()
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failure is not None:
        raise StartupFailed(failure)
    log.info("%s: stopped", name)
    return code


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    """Drops a dead worker's live gauges (in-flight calls, model info) from the sums."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path=metrics_dir)
