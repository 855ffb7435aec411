"""Long work in a child process, the one mechanism behind the Slicer panels: start a command, read the
JSON lines it prints on stdout as events without blocking the caller, cancel it with everything it
started, and say how it ended.

The segmentation panel runs ``liverseg segment --progress json`` and the training panel ``liverseg
train`` this way, so an out-of-memory or a native crash in torch ends the child, never Slicer with the
user's unsaved scene. No Slicer and no Qt here: the caller polls (a QTimer in Slicer).

Events are the JSON objects with a string ``"event"`` key, one per line; other lines are ignored::

    {"event": "progress", "fraction": 0.4, "message": "fitting the mixture"}
    {"event": "done", "outputs": ["/tmp/labels.nii"], "seconds": 12.3}
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import LiverSegError

LIB_PARENT = Path(__file__).resolve().parents[1]
"""The folder that holds the LiverSegLib package (the LiverSeg module folder): the child's PYTHONPATH."""
CANCEL_GRACE_S = 0.5
"""Seconds between SIGTERM (the CLI then removes its temporary files) and SIGKILL of what is left."""
STDERR_LINES = 50
READER_JOIN_S = 2.0
"""How long to wait for the last output once the process ended; a grandchild still holding the pipes
open must not stall the caller."""

Event = Dict[str, Any]


def python_executable() -> str:
    """The Python to run a child with: Slicer's ``PythonSlicer`` inside Slicer, else this interpreter."""
    name = Path(sys.executable).name.lower()
    if name.startswith("slicer"):  # inside the Slicer application sys.executable may be Slicer itself
        candidate = shutil.which("PythonSlicer") or str(Path(sys.executable).with_name("PythonSlicer"))
        if Path(candidate).exists() or shutil.which(candidate):
            return candidate
    return sys.executable


def cli_command(*args: str) -> List[str]:
    """``python -u -m LiverSegLib.cli ARGS...`` with :func:`python_executable`."""
    return [python_executable(), "-u", "-m", "LiverSegLib.cli", *args]


def child_env() -> Dict[str, str]:
    """This process's environment (inside Slicer: the launcher's, which PythonSlicer needs) with
    LiverSegLib importable and Python's output unbuffered, so events arrive as they are printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_event(line: str) -> Optional[Event]:
    """The JSON object on ``line``, or None for any other line (log output, progress bars, bad JSON)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("event"), str) else None


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its exit status (negative: killed by that signal, POSIX), whether it was
    cancelled, and the last lines it wrote on stderr."""

    returncode: int
    cancelled: bool
    stderr_tail: Tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    @property
    def signal_name(self) -> Optional[str]:
        """``"SIGKILL"`` etc. when a signal ended the process."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def status(self) -> str:
        """``"cancelled"``, ``"killed by SIGKILL ..."`` or ``"exit status N"``."""
        if self.cancelled:
            return "cancelled"
        name = self.signal_name
        if name == "SIGKILL":  # what the kernel's OOM killer sends; it leaves no message of its own
            return "killed by SIGKILL (out of memory? the system ends such processes this way)"
        return f"killed by {name}" if name else f"exit status {self.returncode}"

    @property
    def message(self) -> str:
        """The last non-empty stderr line (a traceback's exception, the CLI's one-line error), else :attr:`status`."""
        return next((line.strip() for line in reversed(self.stderr_tail) if line.strip()), self.status)


class Job:
    """A command running in a process group of its own, its stdout read as events by a thread.

    Args:
        command: argv; e.g. :func:`cli_command`.
        cwd: the child's working folder.
        env: its environment; default :func:`child_env`.

    Raises:
        LiverSegError: the command cannot be started (missing executable, say).
    """

    def __init__(self, command: Sequence[str], cwd: Union[str, os.PathLike, None] = None,
                 env: Optional[Mapping[str, str]] = None):
        self.command = [str(part) for part in command]
        self.outcome: Optional[Outcome] = None
        self.cancelled = False
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._stderr: Deque[str] = collections.deque(maxlen=STDERR_LINES)
        try:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, errors="replace", bufsize=1, cwd=None if cwd is None else str(cwd),
                env=dict(env) if env is not None else child_env(), **_own_process_group(),
            )
        except OSError as exc:
            raise LiverSegError(f"cannot start {self.command[0]} ({exc.strerror or exc})") from exc
        self._readers = [_reader(self.process.stdout, self._put_event),
                         _reader(self.process.stderr, self._stderr.append)]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def stderr_tail(self) -> List[str]:
        """The last stderr lines so far (all of them once it ended: see :attr:`Outcome.stderr_tail`)."""
        return list(self._stderr)

    def poll(self) -> List[Event]:
        """The events printed since the last call; never waits on the child. Once it has ended (and its
        last lines are read), :attr:`outcome` is set, and this call returns its last events."""
        if self.outcome is None and self.process.poll() is not None:
            self._settle()
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: Optional[float] = None) -> Outcome:
        """Block until the child ends; its events stay for :meth:`poll`.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` s.
        """
        self.process.wait(timeout)
        self._settle()
        return self.outcome

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """End the child and every process it started: SIGTERM to its group, SIGKILL to what is left after
        ``grace`` s (on Windows ``taskkill /T /F`` at once). Returns once the child is gone."""
        if self.outcome is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], capture_output=True)
        else:
            _signal_group(self.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not _exited(self.process) and time.monotonic() < deadline:
                time.sleep(0.01)
            # Also when the child is gone: what it started may live on in its group. Unless something
            # reaped it first (Popen.poll), the child is a zombie now, so its group id is not reused yet.
            _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _put_event(self, line: str) -> None:
        record = parse_event(line)
        if record is not None:
            self._events.put(record)

    def _settle(self) -> None:
        """The child has ended: collect its last output and record the outcome (once)."""
        if self.outcome is not None:
            return
        for reader in self._readers:
            reader.join(READER_JOIN_S)
        for reader, stream in zip(self._readers, (self.process.stdout, self.process.stderr)):
            if not reader.is_alive():  # closing a pipe a thread still reads could hang that thread
                stream.close()
        self.outcome = Outcome(self.process.returncode, self.cancelled, tuple(self._stderr))


def _own_process_group() -> Dict[str, Any]:
    """Popen arguments that put the child at the head of a new process group (a new session on POSIX),
    so cancel reaches its children and grandchildren and none of Slicer's own processes."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the group is empty: everything already ended
        pass


def _exited(process: subprocess.Popen) -> bool:
    """Whether the child ended, without reaping it (``WNOWAIT``), so its pid stays reserved."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile by another thread's wait
        return True


def _reader(stream, handle: Callable[[str], None]) -> threading.Thread:
    """A daemon thread that hands each line of ``stream`` to ``handle`` until EOF."""

    def read() -> None:
        for line in iter(stream.readline, ""):
            handle(line.rstrip("\r\n"))

    thread = threading.Thread(target=read, name="LiverSeg job output", daemon=True)
    thread.start()
    return thread


__all__ = ["Job", "Outcome", "Event", "cli_command", "child_env", "parse_event", "python_executable",
           "CANCEL_GRACE_S", "LIB_PARENT"]
