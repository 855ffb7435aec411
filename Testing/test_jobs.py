"""jobs.Job, the child-process mechanism behind segmentation and training in Slicer, with small Python
children: events streamed without blocking, cancel of a whole process tree, a killed child, a child out
of memory."""

from __future__ import annotations

import ast
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from LiverSegLib import jobs
from LiverSegLib.errors import LiverSegError

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")


def python(code: str) -> list:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


def collect(job: jobs.Job, timeout: float = 30.0) -> list:
    """Poll as the panel's timer does until the job has an outcome; all its events."""
    events, deadline = [], time.monotonic() + timeout
    while job.outcome is None:
        assert time.monotonic() < deadline, "job did not end"
        events += job.poll()
        time.sleep(0.01)
    return events + job.poll()


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a parent that does not reap (a container's init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_events_stream_without_blocking_and_the_job_finishes():
    job = jobs.Job(python("""
        import json, sys, time
        time.sleep(0.3)
        for step in range(3):
            print(json.dumps({"event": "progress", "fraction": step / 3, "message": f"step {step}"}))
            print("a log line, not an event")
        print("{broken")
        print("a warning", file=sys.stderr)
        print(json.dumps({"event": "done", "outputs": ["x"]}))
    """))
    started = time.monotonic()
    assert job.poll() == [] and time.monotonic() - started < 0.1, "poll waited for the child"
    assert job.running and job.outcome is None
    events = collect(job)
    assert [e["event"] for e in events] == ["progress"] * 3 + ["done"]
    assert [e["fraction"] for e in events[:3]] == [0, 1 / 3, 2 / 3]
    outcome = job.outcome
    assert outcome.ok and outcome.returncode == 0 and outcome.signal_name is None and not outcome.cancelled
    assert outcome.message == "a warning" and job.wait() is outcome


def test_cancel_kills_child_and_grandchild_within_a_second():
    """The child ignores SIGTERM (and so does its grandchild, which inherits that): SIGKILL must follow."""
    job = jobs.Job(python("""
        import json, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(json.dumps({"event": "started", "child": __import__("os").getpid(), "grandchild": grandchild.pid}))
        time.sleep(60)
    """))
    deadline = time.monotonic() + 30
    events = []
    while not events:
        assert time.monotonic() < deadline, "child did not start"
        events = job.poll()
        time.sleep(0.01)
    pids = (events[0]["child"], events[0]["grandchild"])
    assert not any(gone(pid) for pid in pids)
    started = time.monotonic()
    job.cancel()
    while not all(gone(pid) for pid in pids) and time.monotonic() - started < 1.0:
        time.sleep(0.01)  # SIGKILL is sent; the kernel ends the grandchild a moment later
    assert all(gone(pid) for pid in pids), "a process of the tree survived the cancel by a second"
    assert time.monotonic() - started < 1.0, "cancel took more than a second"
    outcome = job.wait(5)
    assert outcome.cancelled and not outcome.ok and outcome.status == "cancelled"


def test_cancel_lets_the_cli_clean_up_first():
    """SIGTERM comes first: a child that handles it (the CLI removes its temporary files) ends on its own."""
    job = jobs.Job(python("""
        import json, signal, sys, time
        def stop(*_):
            print("cleaned up", file=sys.stderr)
            sys.exit(130)
        signal.signal(signal.SIGTERM, stop)
        print(json.dumps({"event": "ready"}))
        time.sleep(60)
    """))
    while not job.poll():
        time.sleep(0.01)
    job.cancel()
    outcome = job.wait(5)
    assert outcome.returncode == 130 and outcome.cancelled and outcome.message == "cleaned up"


def test_a_killed_child_is_reported_as_killed():
    job = jobs.Job(python("""
        import os, signal, sys
        print("about to be killed", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    collect(job)
    outcome = job.outcome
    assert outcome.returncode == -signal.SIGKILL and outcome.signal_name == "SIGKILL" and not outcome.cancelled
    assert outcome.status.startswith("killed by SIGKILL (out of memory?")
    assert outcome.message == "about to be killed"


def test_a_child_out_of_memory_reports_its_memory_error():
    """A 1 GB address-space limit set in the child (after its imports), then an 8 GB array."""
    job = jobs.Job(python("""
        import resource
        import numpy
        limit = 1 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        numpy.ones(1 << 30)
    """))
    collect(job)
    outcome = job.outcome
    assert outcome.returncode == 1 and not outcome.ok
    assert "MemoryError" in outcome.message and "Unable to allocate" in outcome.message


def test_a_command_that_cannot_start_is_one_error():
    with pytest.raises(LiverSegError, match="cannot start /no/such/python"):
        jobs.Job(["/no/such/python", "-c", "pass"])


def test_cli_command_and_child_env():
    assert jobs.cli_command("segment", "ct.nii") == [sys.executable, "-u", "-m", "LiverSegLib.cli", "segment", "ct.nii"]
    env = jobs.child_env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(jobs.LIB_PARENT) and env["PYTHONUNBUFFERED"] == "1"


def test_python39_syntax():
    """jobs.py runs inside Slicer 5.8, whose Python is 3.9."""
    source = Path(jobs.__file__).read_text()
    ast.parse(source, feature_version=(3, 9))
    assert "from __future__ import annotations" in source
