"""CT volumes in memory and on disk: NIfTI, NRRD and DICOM series in; labelmaps out, atomically.

A :class:`Volume` is a 3D array indexed (i, j, k) plus the 4x4 affine that maps (i, j, k) to RAS
millimetres -- the convention of nibabel and of Slicer's IJKToRAS matrix, so a labelmap written with
the CT's affine overlays the CT exactly in Slicer.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from .errors import LiverSegError

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

# DICOM and NRRD store LPS; nibabel and Slicer's IJKToRAS use RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis of a 4x4 voxel-to-RAS matrix."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


@dataclass
class Volume:
    """A 3D image on a voxel grid.

    Attributes:
        array: voxel values, shape (I, J, K).
        affine: 4x4 float64 matrix mapping voxel indices (i, j, k, 1) to RAS millimetres.
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return spacing_of(self.affine)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding other values (a labelmap of this CT, say)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.array.shape}")
        return Volume(array, self.affine.copy())


def suffix_of(path: str | os.PathLike) -> str:
    """The format-bearing suffix: '.nii.gz' and '.seg.nrrd' count as one."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


# --------------------------------------------------------------------------------------------- reading


def load_ct(path: str | os.PathLike) -> Volume:
    """Read a CT from a NIfTI or NRRD file or a DICOM series folder and check that it is a CT in HU.

    Raises:
        LiverSegError: the path is missing, unreadable, or not a 3D CT (see :func:`check_ct`).
    """
    volume = load_volume(path)
    check_ct(volume.array, str(path))
    return volume


def load_volume(path: str | os.PathLike) -> Volume:
    """Read any 3D scalar image with its exact geometry (no resampling, no reorientation)."""
    path = Path(path)
    if not path.exists():
        raise LiverSegError(f"{path}: no such file or folder; check the path")
    try:
        if path.is_dir():
            from .dicom import read_series  # imports SimpleITK and scipy, needed only for DICOM

            volume = read_series(path)
        elif suffix_of(path) in NIFTI_SUFFIXES:
            volume = _read_nifti(path)
        else:
            volume = _read_with_simpleitk(path)
    except LiverSegError:
        raise
    except MemoryError:
        raise LiverSegError(f"{path}: not enough memory to read this image; close other programs or use a machine with more RAM")
    except Exception as exc:  # readers raise many types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LiverSegError(
            f"{path}: cannot read the image ({reason}); the file may be truncated or not a NIfTI/NRRD/DICOM image, "
            "re-export it from the scanner or viewer"
        ) from exc
    _check_3d_scalar(volume.array, str(path))
    _check_affine(volume.affine, str(path))
    if volume.array.ndim == 4:  # NIfTI stores some 3D images with a singleton 4th axis
        volume = Volume(volume.array[..., 0], volume.affine)
    return volume


def _read_nifti(path: Path) -> Volume:
    image = nib.load(str(path))
    # nibabel's choice of sform/qform equals Slicer's for files whose codes agree (the usual case).
    array = np.asanyarray(image.dataobj)
    return Volume(array, image.affine.astype(np.float64))


def _read_with_simpleitk(path: Path) -> Volume:
    import SimpleITK as sitk

    return from_simpleitk(sitk.ReadImage(str(path)))


def from_simpleitk(image) -> Volume:
    """A SimpleITK image as a Volume: array axes reversed to (i, j, k), geometry from LPS to RAS."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LiverSegError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); a CT has one"
        )
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    affine = np.eye(4)
    if dim == 3:
        affine[:3, :3] = direction @ np.diag(image.GetSpacing())
        affine[:3, 3] = image.GetOrigin()
        affine = LPS_TO_RAS @ affine
    return Volume(array, affine)


# --------------------------------------------------------------------------------------------- checks


def _check_3d_scalar(array: np.ndarray, name: str) -> None:
    squeezed = array.shape
    if array.ndim == 4 and array.shape[3] == 1:
        return
    if array.ndim == 4 and array.shape[3] in (3, 4):
        raise LiverSegError(f"{name}: RGB/colour image of shape {squeezed}; LiverSeg needs a greyscale 3D CT in HU")
    if array.ndim != 3:
        raise LiverSegError(f"{name}: {array.ndim}D image of shape {squeezed}; LiverSeg needs a 3D CT volume "
                            "(a single series, not one slice and not a time series)")
    if array.dtype.fields is not None or array.dtype.kind not in "iuf":
        raise LiverSegError(f"{name}: voxel type {array.dtype} is not scalar (RGB?); LiverSeg needs a greyscale CT in HU")


def _check_affine(affine: np.ndarray, name: str) -> None:
    """Refuse a voxel-to-patient matrix that places no voxel: MONAI's reorientation would fail on it with a
    traceback, and any volume computed from it would be meaningless."""
    problem = ""
    if not np.isfinite(affine).all():
        problem = "holds NaN or infinite values"
    elif np.linalg.svd(affine[:3, :3], compute_uv=False).min() < 1e-6:
        problem = "is singular (a voxel size of 0, or two axes along one direction)"
    if problem:
        raise LiverSegError(f"{name}: the affine (voxel-to-patient matrix of the header) {problem}; fix the "
                            "header's spacing and orientation (sform/qform) or export the CT again")


def check_ct(array: np.ndarray, name: str) -> None:
    """Refuse what would make a meaningless segmentation, naming the problem and the fix.

    A CT in Hounsfield units has air (about -1000 HU) around or inside the body. An image without any
    voxel below -500 is most likely MR, a CT stored without its rescale intercept, or already
    normalised.
    """
    _check_3d_scalar(array, name)
    if min(array.shape) < 2:
        raise LiverSegError(f"{name}: shape {array.shape} has an axis of length < 2; LiverSeg needs a 3D CT volume")
    if array.size == 0:
        raise LiverSegError(f"{name}: empty image; check that the export finished")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise LiverSegError(f"{name}: {bad} voxels are NaN or infinite; re-export the CT or replace them (e.g. with -1024 HU)")
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise LiverSegError(f"{name}: every voxel is {low:g}; the image is empty or blank, check the export")
    if np.percentile(array[::4, ::4, ::4] if array.size > 10**6 else array, 0.5) > -500:
        raise LiverSegError(
            f"{name}: intensities {low:g}..{high:g} do not look like a CT in Hounsfield units (no air below -500); "
            "give a CT (not MR), with RescaleSlope/RescaleIntercept applied"
        )


# --------------------------------------------------------------------------------------------- writing


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before minutes of work) if an output cannot be written there."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LiverSegError(f"{path}: is a folder; give a file name such as {path / 'liver.seg.nrrd'}")
    if not parent.is_dir():
        raise LiverSegError(f"{path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise LiverSegError(f"{path}: folder {parent} is not writable; choose another output path")
    return path


# The pending renames of the output set open in this context, if any (see output_set).
_OPEN_SET: contextvars.ContextVar[Optional[List[Tuple[Path, Path]]]] = contextvars.ContextVar("output_set", default=None)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format) and move it
    onto ``path`` only if the block succeeds: a failed run never leaves a partial file or clobbers an
    existing one. Inside an :func:`output_set` the move waits for the end of the set.

    Raises:
        LiverSegError: the file could not be written (full disk, read-only folder, ...): the writers' OSError
            as one line naming ``path`` (not the temporary file), the reason and the fix.
    """
    path = check_writable(path)
    with _reported_as(path):
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix_of(path), dir=path.parent or ".")
        os.close(handle)
    temp_path = Path(temp)
    try:
        with _reported_as(path):
            yield temp_path
        pending = _OPEN_SET.get()
        if pending is None:
            _publish(temp_path, path)
        else:
            pending.append((temp_path, path))
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def output_set(paths: Sequence[str | os.PathLike]) -> Iterator[None]:
    """Make the outputs of one run appear together or not at all, and keep other runs off them.

    Every path is locked for the whole block: a second run writing one of them is refused. Each
    :func:`atomic_output` inside the block writes its temporary file; they are all renamed onto their outputs
    when the block succeeds, and all removed, leaving every output as it was, when it fails (an error, Ctrl-C,
    SIGTERM).
    """
    pending: List[Tuple[Path, Path]] = []
    with contextlib.ExitStack() as locks:
        for path in paths:
            locks.enter_context(_locked(Path(path)))
        token = _OPEN_SET.set(pending)
        try:
            yield
            for temp, path in pending:
                _publish(temp, path)
        except BaseException:
            for temp, _ in pending:
                temp.unlink(missing_ok=True)
            raise
        finally:
            _OPEN_SET.reset(token)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``.NAME.lock`` beside ``path``, or refuse at once if another run holds it.
    The kernel releases a flock when its process ends, even when killed, so no lock outlives its run."""
    if fcntl is None:  # Windows has no flock: concurrent runs there are not refused
        yield
        return
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        with _reported_as(path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LiverSegError(f"another liverseg run is writing {path}; wait for it or choose another output") from None
        # The run before us removes its lock file before releasing the lock; a lock on that removed file
        # guards nothing, so take the one now at lock_path instead.
        if _is_file_at(fd, lock_path):
            break
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _publish(temp: Path, path: Path) -> None:
    """Move a finished temporary file onto its output."""
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    with _reported_as(path):
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)


@contextlib.contextmanager
def _reported_as(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into the one-line error naming it, why, and what to do."""
    try:
        yield
    except OSError as error:
        folder = path.parent if str(path.parent) else Path(".")
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = f"free some space (or quota) on {folder}'s disk, or choose another output folder"
        elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = f"{folder} is not writable; choose another output folder"
        else:
            fix = f"check the free space on {folder}'s disk and that it is writable, or choose another output folder"
        raise LiverSegError(f"{path}: could not be written ({error.strerror or error}); {fix} (any earlier file of "
                            "that name is kept)") from error


def save_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write a volume as NIfTI (.nii, .nii.gz) or NRRD (.nrrd) with its exact affine, atomically."""
    suffix = suffix_of(path)
    with atomic_output(path) as temp:
        if suffix in NIFTI_SUFFIXES:
            image = nib.Nifti1Image(volume.array, volume.affine)
            # qform and sform both "scanner" (code 1): nibabel, ITK and Slicer then read the same affine.
            image.set_qform(volume.affine, code=1)
            image.set_sform(volume.affine, code=1)
            nib.save(image, str(temp))
        elif suffix == ".nrrd":
            _write_with_simpleitk(volume, temp)
        else:
            raise LiverSegError(f"{path}: unknown output type '{suffix}'; use .nii.gz, .nii, .nrrd or .seg.nrrd")
    return Path(path)


def _write_with_simpleitk(volume: Volume, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:  # how SimpleITK reports a failed write (a full disk...), without the errno
        raise OSError("SimpleITK's NRRD writer failed") from error
    check_complete(path, "SimpleITK")


def check_complete(path: Path, writer: str) -> None:
    """Read back a file that an ITK-based writer (SimpleITK's, Slicer's) made: they ignore some failed writes
    (a full disk) and report success with the file cut short."""
    import SimpleITK as sitk

    try:
        sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise OSError(f"the file {writer} wrote is incomplete") from error
