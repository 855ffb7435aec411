"""Clean failures: a write that fails (full disk, unwritable folder), SIGTERM, or a concurrent run on the same
outputs ends with one line on stderr and no partial, hidden or mixed file; the outputs of a run appear together
or not at all."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from LiverSegLib import segmenters, volume
from LiverSegLib.cli import main
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import save_volume

# `liverseg` with a thresholding segmenter (the segmentation is not under test) and a .nrrd write that blocks.
CHILD = """
import sys, time
from LiverSegLib import cli, segmenters, volume

class Threshold:
    def segment(self, ct, progress):
        return (ct.array > 0).astype("uint8")

def stuck(image, path):
    print("writing", path, file=sys.stderr, flush=True)
    time.sleep(120)

segmenters.create_segmenter = lambda *args, **kwargs: Threshold()
volume._write_with_simpleitk = stuck
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((40, 40, 20), (8.0, 8.0, 12.0), seed=4)


@pytest.fixture
def ct_path(tmp_path, phantom):
    (tmp_path / "in").mkdir()
    return save_volume(phantom[0], tmp_path / "in" / "ct.nii.gz")


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def truth(monkeypatch, phantom):
    """Replace the segmenter with the phantom's labels; count its runs."""
    runs = []

    class Truth:
        def segment(self, ct, progress):
            runs.append(ct)
            return phantom[1].array

    monkeypatch.setattr(segmenters, "create_segmenter", lambda *args, **kwargs: Truth())
    return runs


def disk_full_for(monkeypatch, output: Path) -> None:
    """Make the temporary file of ``output`` a link to /dev/full: every write to it fails with ENOSPC in the
    kernel, whichever library (nibabel, ITK, VTK, matplotlib) writes."""
    mkstemp = tempfile.mkstemp

    def full(*args, **kwargs):
        handle, temp = mkstemp(*args, **kwargs)
        if Path(temp).name.startswith(f".{output.name}."):
            os.unlink(temp)
            os.symlink("/dev/full", temp)
        return handle, temp

    monkeypatch.setattr(volume.tempfile, "mkstemp", full)


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_full_disk_is_one_line_naming_the_output(ct_path, out, truth, monkeypatch, capsys, suffix):
    if suffix == ".seg.nrrd":
        pytest.importorskip("slicer", reason="slicer-core is needed to write .seg.nrrd")
    output = out / f"liver{suffix}"
    disk_full_for(monkeypatch, output)
    assert main(["segment", str(ct_path), "-o", str(output)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"liverseg: error: {output}: could not be written (")
    assert "disk" in line and f".{output.name}." not in line  # the fix, and never the temporary file
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EDQUOT, "free some space"),
                                       (errno.EACCES, "is not writable"), (errno.EROFS, "is not writable")])
def test_each_write_error_says_why_and_what_to_do(ct_path, out, truth, monkeypatch, capsys, code, fix):
    def fail(image, temp):
        Path(temp).write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(temp))

    monkeypatch.setattr(volume.nib, "save", fail)
    output = out / "liver.nii.gz"
    assert main(["segment", str(ct_path), "-o", str(output)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"liverseg: error: {output}: could not be written ({os.strerror(code)}); ")
    assert fix in line and line.endswith("(any earlier file of that name is kept)")
    assert list(out.iterdir()) == []


def test_failed_preview_leaves_the_labelmaps_as_they_were(ct_path, out, truth, monkeypatch, capsys):
    earlier = out / "liver.nii.gz"
    earlier.write_bytes(b"an earlier run's labelmap")
    preview = out / "liver.png"
    disk_full_for(monkeypatch, preview)
    assert main(["segment", str(ct_path), "-o", str(earlier), "-o", str(out / "liver.nrrd"),
                 "--preview", str(preview)]) == 2
    assert error_line(capsys).startswith(f"liverseg: error: {preview}: could not be written (No space left on device)")
    assert list(out.iterdir()) == [earlier]
    assert earlier.read_bytes() == b"an earlier run's labelmap"


def test_sigterm_while_writing_removes_temporary_files(ct_path, out):
    run = subprocess.Popen(
        [sys.executable, "-c", CHILD, "segment", str(ct_path), "-o", str(out / "liver.nii.gz"),
         "-o", str(out / "liver.nrrd")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(volume.__file__).parents[1])},
    )
    try:
        assert run.stderr.readline().startswith("writing")  # the .nii.gz is written, the .nrrd being written
        names = {path.name for path in out.iterdir()}
        assert {".liver.nii.gz.lock", ".liver.nrrd.lock"} < names and len(names) == 4  # and the two temporary files
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 130
    finally:
        run.kill()
    assert run.stderr.read().strip() == "liverseg: interrupted; no output was written for the unfinished step"
    assert list(out.iterdir()) == []


def test_a_second_run_on_the_same_outputs_is_refused(ct_path, out, truth, capsys):
    output = out / "liver.nii.gz"
    lock = out / ".liver.nii.gz.lock"
    lock.touch()  # left by a killed run: the file alone locks nothing
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["segment", str(ct_path), "-o", str(out / "liver.nrrd"), "-o", str(output)]) == 2
        assert error_line(capsys) == (f"liverseg: error: another liverseg run is writing {output}; "
                                      "wait for it or choose another output")
        assert truth == [] and lock.exists()
        assert list(out.iterdir()) == [lock]
    assert main(["segment", str(ct_path), "-o", str(out / "liver.nrrd"), "-o", str(output)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["liver.nii.gz", "liver.nrrd"]
