"""LiverSeg core library: CT I/O, preprocessing, segmenters, metrics and the `liverseg` command.

Imports neither Slicer nor Qt (``mrml.py`` imports Slicer's MRML lazily, only to write ``.seg.nrrd``),
so it runs in Slicer's bundled Python and in a plain virtual environment alike.
"""

__version__ = "0.1.0"

LABELS = {0: "background", 1: "liver", 2: "tumour"}
