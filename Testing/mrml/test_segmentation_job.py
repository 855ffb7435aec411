"""The panel's segmentation in a child process (``liverseg segment --progress json`` through jobs.Job) on a
real MRML scene: the same labelmap as in Slicer's process, progress streamed, Cancel that kills the
child's process tree, and a child that dies (killed, out of memory) leaving the scene as it was."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import numpy as np
import pytest

import liverseg_scenarios as scenarios
from LiverSegLib import mrml, slicer_logic
from LiverSegLib.errors import CancelledError, LiverSegError
from LiverSegLib.segmenters import create_segmenter

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")

TINY_EM = {"shape": (56, 48, 20), "spacing": (4.5, 4.5, 8.0)}
"""A phantom EM segments in about two seconds (liver Dice ~0.76)."""


def child(code: str):
    """A command builder that runs ``code`` instead of ``liverseg segment`` (same signature)."""
    return lambda *args: [sys.executable, "-u", "-c", textwrap.dedent(code)]


def poll_until_done(logic, job, timeout: float = 120.0):
    """Poll as the panel's timer does; (result, the (fraction, message) pairs seen)."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        result = logic.poll(job)
        if result is not None:
            return result, seen
        seen.append((job.fraction, job.message))
        assert time.monotonic() < deadline, "segmentation did not finish"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process, or a zombie whose parent does not reap it (a container's init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_em_in_a_child_gives_the_same_labelmap_as_in_slicers_process(ctx, scene, tmp_path):
    node, _, truth = scenarios.load_phantom(ctx, tmp_path, seed=1, **TINY_EM)
    logic = slicer_logic.LiverSegLogic(ctx)
    in_process = create_segmenter("em").segment(logic.read_input(node))
    job = logic.start(node, "em")
    assert job.process is not None and job.thread is None, "a named method must run in a child process"
    result, seen = poll_until_done(logic, job)
    assert job.process.outcome.ok and not job.folder.exists(), "the child's temporary files were left behind"
    scenarios.check_segmentation(ctx, result, node, expected=in_process)
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and any(0 < f < 1 for f in fractions), f"no progress streamed: {seen}"
    assert any("EM" in message for _, message in seen), "the segmenter's own step names were not shown"
    assert (job.fraction, job.message) == (1.0, "done")
    got = mrml.segmentation_to_labels(ctx.scene, result.segmentation_node, node).array >= 1
    assert 2.0 * (got & (truth.array >= 1)).sum() / (got.sum() + (truth.array >= 1).sum()) > 0.6


def test_cancel_kills_the_child_tree_and_a_second_start_is_refused(ctx, scene, tmp_path):
    node, _, _ = scenarios.load_phantom(ctx, tmp_path)
    before = scenarios.node_summary(ctx.scene)
    logic = slicer_logic.LiverSegLogic(ctx, command_builder=child("""
        import json, os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(json.dumps({"event": "progress", "fraction": 0.3, "message": f"{os.getpid()} {grandchild.pid}"}))
        time.sleep(60)
    """))
    job = logic.start(node, "em")
    deadline = time.monotonic() + 30
    while logic.poll(job) is None and job.fraction < 0.3:
        assert time.monotonic() < deadline, "child did not report"
        time.sleep(0.01)
    pids = [int(pid) for pid in job.message.split()]
    with pytest.raises(LiverSegError, match="a segmentation is already running"):
        logic.start(node, "em")
    assert scenarios.node_summary(ctx.scene) == before

    started = time.monotonic()
    logic.cancel(job)
    while not all(gone(pid) for pid in pids) and time.monotonic() - started < 1.0:
        time.sleep(0.01)
    assert all(gone(pid) for pid in pids), "the child or its grandchild outlived Cancel by a second"
    for _ in range(2):  # and again: a later poll repeats it
        with pytest.raises(CancelledError):
            logic.poll(job)
    assert scenarios.node_summary(ctx.scene) == before and not job.folder.exists()


@pytest.mark.parametrize("code, fragments", [
    ("""
        import resource
        import numpy
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a 1 GB address space, then 8 GB asked
        numpy.ones(1 << 30)
    """, ("not enough memory to segment this CT", "MemoryError", "Unable to allocate")),
    ("""
        import os, signal, sys
        os.kill(os.getpid(), signal.SIGKILL)
    """, ("em failed (killed by SIGKILL (out of memory?",)),
], ids=["out of memory", "killed"])
def test_a_child_that_dies_leaves_the_scene_as_it_was(ctx, scene, tmp_path, code, fragments):
    node, _, labels = scenarios.load_phantom(ctx, tmp_path)
    logic = slicer_logic.LiverSegLogic(ctx, command_builder=child(code))
    existing = logic.run(node, scenarios.OracleSegmenter(labels.array)).segmentation_node
    before = scenarios.node_summary(ctx.scene)
    job = logic.start(node, "em", segmentation_node=existing)
    with pytest.raises(LiverSegError) as error:
        poll_until_done(logic, job, timeout=30)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert scenarios.node_summary(ctx.scene) == before and not job.folder.exists()
    after = mrml.segmentation_to_labels(ctx.scene, existing, node).array
    assert np.array_equal(after, labels.array), "the existing segmentation changed"
