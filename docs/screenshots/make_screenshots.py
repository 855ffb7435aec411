"""Regenerate the README screenshots from LiverSeg's own offscreen render (no desktop Slicer needed).

    python docs/screenshots/make_screenshots.py            # writes docs/screenshots/liverseg_3d.png

Segments a synthetic phantom CT with the EM segmenter through the LiverSeg module's logic on a headless
MRML scene (slicer-core), then renders the closed surfaces over a coronal CT slice, as seen from the front.
Linux without a display needs EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "LiverSeg"))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import vtk  # noqa: E402

from LiverSegLib import mrml  # noqa: E402
from LiverSegLib.phantom import make_phantom  # noqa: E402
from LiverSegLib.slicer_logic import LiverSegLogic, render_segmentation_png  # noqa: E402
from LiverSegLib.volume import save_volume  # noqa: E402


def main() -> int:
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    ctx = mrml.headless_context()
    ct, _labels = make_phantom(shape=(160, 160, 80), spacing=(2.0, 2.0, 3.2), seed=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "phantom_ct.nii.gz"
        save_volume(ct, path)
        volume = ctx.volumes.AddArchetypeVolume(str(path), "Phantom CT")
        result = LiverSegLogic(ctx).run(volume, "em")
        out = render_segmentation_png(result.segmentation_node, HERE / "liverseg_3d.png", volume_node=volume, size=(800, 600))
    print(f"{out['path']} ({out['backend']}); {result.volumes.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
