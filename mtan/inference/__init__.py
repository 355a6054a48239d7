"""Running a trained network on photos.

==============  ======================================================================
module          job
==============  ======================================================================
``pipeline``    a photo's one path: a processing :class:`Resolution`, fit, resize, pad,
                run, mirror, back to the photo's size
==============  ======================================================================
"""
from mtan.inference.pipeline import PhotoView, Resolution, fitted, resize, to_tensor

__all__ = ["PhotoView", "Resolution", "fitted", "resize", "to_tensor"]
