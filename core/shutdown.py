"""Leave no process behind: a run that is interrupted, terminated or killed takes its helper
processes (pool workers, Ray's processes) with it.

Contract, one mechanism for each way a run can end:

- **Interrupted** (Ctrl-C, SIGTERM, SIGHUP). Inside :func:`interrupt_on_signals` (main thread
  only; re-entrant; the previous handlers are restored when it exits) SIGTERM and SIGHUP raise
  :class:`Terminated`, a :class:`KeyboardInterrupt`, so every ``finally`` / ``except
  KeyboardInterrupt`` that cleans up after Ctrl-C (terminating pool workers, ``ray.shutdown()``)
  runs for them too; :func:`exit_code` gives 130, 143 or 129. A second signal during that
  clean-up is held, so it cannot abort it (nox sends SIGINT, then SIGTERM 0.3 s later); a third
  one exits at once, without clean-up. A signal that was ignored before (``nohup``) stays ignored.
- **Killed outright** (SIGKILL, a crash). A worker process calls :func:`die_with_parent` first
  thing: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill it when its parent
  dies (checked against the expected parent pid, in case the parent died before the call).
  Caveat: the kernel ties it to the parent *thread* that started the worker, so start workers
  from a thread that outlives them (the main thread). Elsewhere a daemon thread polls
  ``os.getppid()`` once a second, which catches reparenting on macOS and the BSDs; on Windows
  the parent pid does not change and the watchdog never fires.
- **Ray started here**. :func:`start_local_ray` wraps ``ray.init`` for an instance on this
  machine: it restores this module's handlers (``ray.init`` replaces SIGTERM's with its own
  ``sys.exit``), and on Linux it first starts a :class:`Reaper`, a ~10 MB process that, if this
  process dies without standing it down, SIGKILLs every process it has seen descend from this
  one, within ``interval_s`` (0.5 s). Measured with Ray 2.60: an orderly ``ray.shutdown()``
  takes ~1.4 s, longer than nox waits before its SIGKILL (0.5 s); when the driver is SIGKILLed,
  Ray alone takes down gcs_server, raylet, the dashboard, monitor and log monitor at once (they
  carry ``PR_SET_PDEATHSIG``), its task workers within ~3 s, but its dashboard agent and
  runtime-env agent live ~60 s more (they wait on a call to the dead GCS); with the reaper
  nothing is left. The limits: a process started less than ``interval_s`` before the driver died
  whose parent died too is missed; if the reaper is killed with the driver, Ray's own behaviour
  above applies (a SIGKILL to the whole process group takes the agents too); no reaper outside
  Linux.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "Reaper",
    "Terminated",
    "die_with_parent",
    "exit_code",
    "interrupt_on_signals",
    "keep_handlers",
    "start_local_ray",
]

_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
FORCE_AFTER = 3  # the signal that exits at once, without clean-up


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP received inside :func:`interrupt_on_signals`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """The shell's exit status for a run stopped by ``exc``: 128 + the number of the signal,
    ``exc.signum``, else the first one the last :func:`interrupt_on_signals` received (Ray
    re-raises any exception of a signal handler as a plain KeyboardInterrupt), else SIGINT's."""
    signum = getattr(exc, "signum", None) or _stopped_by or signal.SIGINT
    return 128 + int(signum)


class _Guard:
    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.received = 0

    def install(self) -> None:
        for s in _SIGNALS:
            prev = signal.getsignal(s)
            if prev is signal.SIG_IGN or prev is None:  # ignored on purpose, or not ours to change
                continue
            self.previous[s] = prev
            signal.signal(s, self.handle)

    def reassert(self) -> None:
        for s in self.previous:
            if signal.getsignal(s) != self.handle:
                signal.signal(s, self.handle)

    def restore(self) -> None:
        for s, prev in self.previous.items():
            signal.signal(s, prev)

    def handle(self, signum: int, frame: Any) -> None:
        global _stopped_by
        self.received += 1
        if self.received == 1:
            _stopped_by = signum
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
        if self.received >= FORCE_AFTER:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # os.write, not print: the signal may have come in the middle of a print to stderr
        name = signal.Signals(signum).name
        os.write(
            2, f"{name}: already stopping (cleaning up); send it again to exit at once\n".encode()
        )


_guard: _Guard | None = None
_stopped_by: int | None = None  # the signal that stopped the last guarded run


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` (see the module doc).

    A no-op outside the main thread (only it receives signals) and when already inside."""
    global _guard, _stopped_by
    if _guard is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _stopped_by = None
    guard = _Guard()
    guard.install()
    _guard = guard
    try:
        yield
    finally:
        _guard = None
        guard.restore()


def keep_handlers() -> None:
    """Put back the handlers of an active :func:`interrupt_on_signals` that a library replaced
    (``ray.init`` installs its own for SIGTERM). A no-op when none is active."""
    if _guard is not None and threading.current_thread() is threading.main_thread():
        _guard.reassert()


# -- workers that die with their parent ------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Make this process die when its parent ``parent_pid`` does (see the module doc); call it
    first thing in a worker (a pool initializer)."""
    if _set_pdeathsig(signal.SIGKILL):
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
            os._exit(1)
        return
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), daemon=True, name="die-with-parent"
    ).start()


# -- the reaper ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live (not zombie) process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[19])


def _descendants(roots: set[int]) -> dict[int, int]:
    """Every live descendant of ``roots``: {pid: start time}."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append((int(name), st[1]))
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _reap(parent: int, fd: int, interval_s: float) -> None:
    """The reaper process: until ``parent`` says goodbye on ``fd``, remember its descendants;
    when it dies instead, SIGKILL them."""
    for s in ("SIGINT", "SIGHUP"):  # a terminal's signals are for the parent, not for us
        signal.signal(getattr(signal, s), signal.SIG_IGN)
    me = os.getpid()
    seen: dict[int, int] = {}  # pid -> start time
    while True:
        seen = {p: t for p, t in seen.items() if _proc_stat(p) is not None}
        seen.update(_descendants({parent}))
        seen.pop(me, None)
        ready, _, _ = select.select([fd], [], [], interval_s)
        if ready and os.read(fd, 1):
            return  # the parent cleaned up itself
        if ready or os.getppid() != parent:
            break
    alive = {p for p, t in seen.items() if (_proc_stat(p) or (0, None))[1] == t}
    targets = {p: seen[p] for p in alive}
    targets.update(_descendants(alive))  # started since the last look by a process still alive
    targets.pop(me, None)
    for pid, start in targets.items():
        st = _proc_stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class Reaper:
    """A small process that SIGKILLs this process's descendants if this process dies without
    calling :meth:`stand_down` (Linux; see the module doc)."""

    def __init__(self, proc: subprocess.Popen, fd: int) -> None:
        self._proc, self._fd = proc, fd

    @classmethod
    def start(cls, interval_s: float = 0.5) -> Reaper | None:
        """The reaper, or None where it cannot run (no /proc, no source file)."""
        if not sys.platform.startswith("linux") or not os.path.isfile(__file__):
            return None
        r, w = os.pipe()
        try:
            # -I -S: stdlib only, no site: starts in ~20 ms and ~10 MB
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(r), str(interval_s)],
                pass_fds=(r,),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            os.close(w)
            return None
        finally:
            os.close(r)
        return cls(proc, w)

    def stand_down(self) -> None:
        """This process cleaned up itself: the reaper exits without killing anything."""
        if self._fd < 0:
            return
        try:
            os.write(self._fd, b"x")
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def start_local_ray(ray: Any, **init_kwargs: Any) -> Callable[[], None]:
    """``ray.init(**init_kwargs)`` for a Ray instance this process starts and owns; returns the
    function that shuts it down (``ray.shutdown()``, then the reaper stands down). See the
    module doc for what is guaranteed when this process is killed instead."""
    reaper = Reaper.start()
    try:
        ray.init(**init_kwargs)
    except BaseException:
        if reaper is not None:
            reaper.stand_down()
        raise
    finally:
        keep_handlers()

    def shutdown() -> None:
        try:
            ray.shutdown()
        finally:
            if reaper is not None:
                reaper.stand_down()

    return shutdown


if __name__ == "__main__":  # the reaper process (Reaper.start)
    _reap(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
