"""``python -m xinfd.forkserver MODULE...``: a process that imports an engine's heavy modules once, then forks
replicas from that state on the daemon's request.

Why: a transformers replica spends ~3 s of its launch importing torch and transformers before it reads a byte
of weights. A fork of a process that already holds them starts serving in the time its model takes to load,
and its replicas share the imported pages copy-on-write. The daemon (``xinfd.preloading``) keeps one server per
interpreter, engine and environment, and only for replicas that run on the CPU: nothing here initialises CUDA,
and a replica placed on a GPU is started the ordinary way.

What makes the fork safe:

* the server runs no threads of its own and starts its preloads with ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` at 1, so no pool thread exists to be lost mid-lock (the
  ones OpenBLAS keeps anyway are stopped and restarted by its own fork handlers);
* it serves requests with a blocking loop, not asyncio, so a child inherits no event loop;
* the child becomes what ``python -m MODULE`` would have been: own session, parent-death signal, stdin and
  log on fds 0-2, the replica's cwd and environment (wholesale), default signal handlers, reseeded random
  generators, torch's thread pool sized from its ``OMP_NUM_THREADS`` again (torch read the server's at
  import), then ``runpy`` runs the module as ``__main__`` and the interpreter exits normally.

The server exits when the daemon closes its end of the socket (``--fd``). Its children get SIGKILL if it dies (their
parent-death signal), as they would with the daemon; the daemon sees that through each child's pidfd.
See ``xinfd.fork_protocol`` for the messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass

from xinfd import fork_protocol

PR_SET_PDEATHSIG = 1
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Imported by every replica the server forks (the worker host and its HTTP stack), whatever the engine. Not
# ``xinfd.worker.__main__`` itself: runpy runs that fresh, and warns when it is in ``sys.modules`` already.
ALWAYS_PRELOADED = ("xinfd.worker.host", "xinfd.worker.launch", "xinfd.plugins")


@dataclass(frozen=True, slots=True)
class ChildOrder:
    """What a freshly forked child must become; returned out of the server loop so the child unwinds it."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


def preload(modules: tuple[str, ...]) -> None:
    """Import ``modules`` (the worker host first); raises whatever the first failing import raises."""
    for name in (*ALWAYS_PRELOADED, *modules):
        importlib.import_module(name)
    # Objects that exist now are never collected in a child: moving them out of the collector's reach keeps
    # a child's garbage collections from writing to (and so copying) every page the server shares with it.
    gc.collect()
    gc.freeze()


class Server:
    """The request loop: fork on ``spawn``, report each reaped child, stop at end of stream."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._children: set[int] = set()

    def serve(self) -> ChildOrder | None:
        """Run until the daemon hangs up (``None``) or this process is a new child (its ``ChildOrder``)."""
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the wakeup fd gets a byte
        with selectors.DefaultSelector() as selector:
            selector.register(self._control, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                for key, _events in selector.select():
                    if key.fileobj is self._wake_read:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_read, 4096)
                        self._reap()
                        continue
                    try:
                        received = fork_protocol.receive(self._control)
                    except BlockingIOError:
                        continue
                    except ValueError:
                        continue  # not ours to guess at; the daemon never sends one
                    if received is None:
                        return None
                    order = self._handle(*received)
                    if order is not None:
                        return order

    def _handle(self, message: dict[str, object], fds: list[int]) -> ChildOrder | None:
        request_id = message.get("id")
        try:
            order = _order_of(message, fds)
        except (ValueError, TypeError) as exc:
            _close_all(fds)
            fork_protocol.send(self._control, {"id": request_id, "error": f"bad spawn request: {exc}"})
            return None
        stdin_fd, log_fd = fds[0], fds[1]
        pid = os.fork()
        if pid == 0:
            self._become_child(stdin_fd, log_fd, order)
            return order
        _close_all(fds)
        self._children.add(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # a kernel before 5.3: the daemon then watches by the exit messages alone
            fork_protocol.send(self._control, {"id": request_id, "pid": pid})
        else:
            try:
                fork_protocol.send(self._control, {"id": request_id, "pid": pid}, (pidfd,))
            finally:
                os.close(pidfd)
        return None

    def _become_child(self, stdin_fd: int, log_fd: int, order: ChildOrder) -> None:
        server_pid = os.getppid()
        os.setsid()
        if sys.platform.startswith("linux"):
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:  # the server died before the parent-death signal was armed
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._control.close()
        os.dup2(stdin_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in {stdin_fd, log_fd} - {0, 1, 2}:
            os.close(fd)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            self._children.discard(pid)
            with contextlib.suppress(OSError):
                fork_protocol.send(self._control, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def _order_of(message: dict[str, object], fds: list[int]) -> ChildOrder:
    if message.get("op") != "spawn":
        raise ValueError(f"unknown op {message.get('op')!r}")
    argv, env, cwd = message.get("argv"), message.get("env"), message.get("cwd")
    if len(fds) != 2:
        raise ValueError(f"expected 2 descriptors (stdin, log), got {len(fds)}")
    if not isinstance(argv, list) or len(argv) < 3 or argv[1] != "-m" or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be [python, '-m', module, args...]")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("cwd must be a string or null")
    return ChildOrder(argv=tuple(argv), env=dict(env), cwd=cwd)


def become(order: ChildOrder) -> None:
    """Turn this forked child into ``python -m MODULE ARGS`` run with ``order``'s environment and cwd."""
    import runpy

    # As a fresh interpreter starts: SIGINT raises KeyboardInterrupt, SIGPIPE is ignored, the rest default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if order.cwd:
        os.chdir(order.cwd)
    os.environ.clear()
    os.environ.update(order.env)
    reseed_and_resize()
    module = order.argv[2]
    sys.argv = [order.argv[0], *order.argv[3:]]
    # The objects frozen before the fork stay frozen: a collection that walked them would copy their pages.
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def reseed_and_resize() -> None:
    """Undo what the child inherited that a fresh interpreter would not share with its siblings."""
    # ``random`` reseeds itself after a fork (its own at-fork hook); numpy's global generator does not.
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = _thread_count(os.environ.get("OMP_NUM_THREADS"))
        with contextlib.suppress(Exception):
            torch.set_num_threads(threads)


def _thread_count(raw: str | None) -> int:
    """``OMP_NUM_THREADS`` as a fresh torch reads it; without one, every core the process may run on."""
    try:
        value = int((raw or "").split(",")[0])
    except ValueError:
        value = 0
    if value > 0:
        return value
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main(argv: list[str]) -> int:
    """``--fd N MODULE...``: serve the daemon on descriptor ``N`` after importing ``MODULE...``."""
    if len(argv) < 2 or argv[0] != "--fd" or not argv[1].isdigit():
        print("usage: python -m xinfd.forkserver --fd N MODULE...  (started by the xinfd daemon)", file=sys.stderr)
        return 2
    try:
        control = socket.socket(fileno=int(argv[1]))
    except OSError as exc:
        print(f"xinfd.forkserver: descriptor {argv[1]} is not the daemon's socket: {exc}", file=sys.stderr)
        return 2
    argv = argv[2:]
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    started = time.monotonic()
    try:
        preload(tuple(argv))
    except BaseException as exc:  # an import may raise anything, SystemExit included
        fork_protocol.send(control, {"failed": f"{type(exc).__name__}: {exc}"})
        return 3
    fork_protocol.send(control, {"ready": True, "pid": os.getpid(), "preloaded": list(argv),
                                 "seconds": round(time.monotonic() - started, 3)})
    order = Server(control).serve()
    if order is None:
        return 0
    become(order)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
