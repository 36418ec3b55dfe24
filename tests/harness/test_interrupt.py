"""Stopping a run leaves no process behind: Ctrl-C, SIGTERM, nox's forwarding (SIGINT, then
SIGTERM 0.3 s later, then SIGKILL) and a SIGKILL of the parent, on the local pool and on Ray.

Each run is a real ``main`` in a subprocess in its own session, so every process it starts
(pool workers, multiprocessing's resource tracker, Ray's processes) keeps that session id even
once orphaned; a test records them mid-run and checks that each is gone (or a zombie) soon
after the signal, and that the points finished before it are stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.shutdown import Terminated, exit_code, interrupt_on_signals, keep_handlers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parents[2]
RUN = "from core.artifact import main; from tests.harness.sleepy import SLEEPY; raise SystemExit(main(SLEEPY))"


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != b"Z"


def session(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] != b"Z" and int(st[3]) == sid:
                found.add(int(name))
    return found


def wait_until(cond, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Run:
    """``main`` of the sleepy artifact in a subprocess, in a new session."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.out, self.marks = tmp / "out", tmp / "marks"
        self.marks.mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONHASHSEED": "0",
            "SLEEPY_MARKS": str(self.marks),
        }
        self.log = open(tmp / "run.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN,
                "--scale",
                "smoke",
                "--jobs",
                "2",
                "--out",
                str(self.out),
                "--quiet",
                "--no-plots",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def stored(self) -> list[str]:
        return sorted(p.name for p in (self.out / "points").glob("*"))

    def wait_running(self, timeout: float) -> set[int]:
        """Wait until both quick points are stored and both long ones are running; returns the
        session's processes then."""
        ok = wait_until(
            lambda: (
                len(list(self.marks.iterdir())) == 2
                and len(self.stored()) == 2
                or self.proc.poll() is not None
            ),
            timeout,
            0.1,
        )
        assert ok and self.proc.poll() is None, f"run not ready: {self.output()}"
        return session(self.pid)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        for pid in session(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def run(tmp_path):
    runs: list[Run] = []

    def start(*extra: str) -> Run:
        runs.append(Run(tmp_path, *extra))
        return runs[-1]

    yield start
    for r in runs:  # a failed test leaves nothing running either
        r.stop()


def assert_all_gone(r: Run, before: set[int], timeout: float) -> None:
    wait_until(lambda: not session(r.pid) and not any(alive(p) for p in before), timeout)
    left = {p for p in before | session(r.pid) if alive(p)}
    cmds = {
        p: Path(f"/proc/{p}/cmdline").read_bytes()[:100].replace(b"\0", b" ").strip()
        for p in left
        if alive(p)
    }
    assert not left, f"still running: {cmds}\n{r.output()}"


def assert_stored(r: Run) -> None:
    names = r.stored()
    assert len(names) == 2 and all(n.endswith(".json") for n in names), names  # no .tmp either


# -- the local pool ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_terminates_workers_and_exits(run, sig):
    r = run()
    before = r.wait_running(30)
    assert len(before) >= 4, before  # the parent, the resource tracker, two workers
    os.kill(r.pid, sig)  # the parent only: the workers never see it
    assert r.proc.wait(timeout=60) == 128 + sig
    assert_all_gone(r, before, 15)
    assert "interrupted; finished points are stored" in r.output()
    assert_stored(r)


@pytest.mark.slow
def test_sigkill_of_the_parent_takes_the_workers(run):
    r = run()
    before = r.wait_running(30)
    os.kill(r.pid, signal.SIGKILL)
    assert r.proc.wait(timeout=60) == -signal.SIGKILL
    assert_all_gone(r, before, 15)
    assert_stored(r)


def nox_stop(r: Run) -> None:
    """What Ctrl-C under nox does: the terminal's SIGINT to the whole process group, then nox
    sends SIGTERM to its child after 0.3 s and SIGKILL 0.2 s later. (When only nox gets the
    SIGINT, the child sees SIGTERM then SIGKILL: the two tests above.)"""
    os.killpg(r.pid, signal.SIGINT)
    try:
        r.proc.wait(timeout=0.3)
    except subprocess.TimeoutExpired:
        r.proc.terminate()
        try:
            r.proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@pytest.mark.slow
def test_nox_forwarding_leaves_nothing(run):
    r = run()
    before = r.wait_running(30)
    nox_stop(r)
    assert_all_gone(r, before, 15)
    assert_stored(r)


# -- Ray ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "nox"])
def test_ray_run_stopped_leaves_nothing(run, how):
    """A local Ray started by the run. SIGTERM: ``ray.shutdown()`` runs, exit 143 (Ray turns
    the handler's exception into a plain KeyboardInterrupt on the way). nox: the parent is
    SIGKILLed in the middle of ``ray.shutdown()`` (which takes over a second), and the reaper
    takes what Ray's own fate-sharing leaves (its two agents would live ~60 s more)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    r = run("--executor", "ray")
    before = r.wait_running(40)
    assert len(before) >= 8, before  # parent, reaper, gcs, raylet, 2 agents, 2 workers, ...
    if how == "SIGTERM":
        os.kill(r.pid, signal.SIGTERM)
        assert r.proc.wait(timeout=60) == 143, r.output()
    else:
        nox_stop(r)
    assert_all_gone(r, before, 15)
    assert_stored(r)


# -- the pieces, in this process --------------------------------------------------------------------


def test_guard_raises_then_holds_then_restores():
    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated) as info, interrupt_on_signals():
        with interrupt_on_signals():  # nested: a no-op
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert exit_code(info.value) == 143 and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before

    with interrupt_on_signals():
        with pytest.raises(KeyboardInterrupt) as ki:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert exit_code(ki.value) == 130
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal during clean-up is held
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before_int


def test_guard_keeps_ignored_signals_ignored_and_reasserts_after_a_library():
    prev = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with interrupt_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # as ray.init does
            keep_handlers()
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, prev)


def test_third_signal_exits_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from core.shutdown import interrupt_on_signals
        with interrupt_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)
            except KeyboardInterrupt:
                try:  # a clean-up that swallows interrupts
                    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1)
                    os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)
                finally:
                    print("clean-up finished")
    """)
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert p.returncode == -signal.SIGTERM, p
    assert "already stopping" in p.stderr and "clean-up finished" not in p.stdout


CHILD = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(grandchild.pid, flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
def test_a_worker_dies_with_its_parent(how):
    """die_with_parent (prctl on Linux) and the watchdog used elsewhere: the grandchild dies
    when its parent, the child, is SIGKILLed."""
    body = (
        "from core.shutdown import die_with_parent; die_with_parent(os.getppid())"
        if how == "pdeathsig"
        else "from core.shutdown import _watch_parent; import threading; "
        "threading.Thread(target=_watch_parent, args=(os.getppid(), 0.1), daemon=True).start()"
    )
    grandchild = f"import os, time; {body}; print('bound', flush=True); time.sleep(60)"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, grandchild, "60"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(child.stdout.readline())
    try:
        assert child.stdout.readline().strip() == "bound"  # the grandchild prints to our pipe
        assert alive(pid)
        child.kill()
        child.wait()
        assert wait_until(lambda: not alive(pid), 3), f"{how}: grandchild {pid} survived"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


REAPED = """
import os, subprocess, sys, time
from core.shutdown import Reaper
reaper = Reaper.start(interval_s=0.1)
nap = [sys.executable, "-c", "import time; time.sleep(60)"]
child = subprocess.Popen(nap)
# a grandchild orphaned before its grandparent dies, as Ray's agents once the raylet is gone
mid = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                        f"p = subprocess.Popen({nap!r}); print(p.pid, flush=True); time.sleep(0.5)"],
                       stdout=subprocess.PIPE, text=True)
orphan = int(mid.stdout.readline())
mid.wait()
if sys.argv[1] == "stand-down":
    reaper.stand_down()
print(child.pid, orphan, reaper._proc.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["killed", "stand-down"])
def test_the_reaper_kills_descendants_only_if_its_parent_dies(how):
    parent = subprocess.Popen(
        [sys.executable, "-c", REAPED, how],
        cwd=REPO,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    pids = [int(x) for x in parent.stdout.readline().split()]
    try:
        assert len(pids) == 3 and all(alive(p) for p in pids[:2])
        parent.kill()
        parent.wait()
        if how == "killed":
            assert wait_until(lambda: not any(alive(p) for p in pids), 2), pids
        else:  # the parent said goodbye: the reaper is gone and killed nothing
            assert not alive(pids[2])
            time.sleep(0.5)
            assert all(alive(p) for p in pids[:2])
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_worker_whose_parent_is_already_gone_exits():
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from core.shutdown import die_with_parent; "
            "die_with_parent(os.getppid() + 1000000); print('still here')",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "still here" not in p.stdout
