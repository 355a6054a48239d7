"""Running a trained network on photos.

==============  ======================================================================
module          job
==============  ======================================================================
``pipeline``    a photo's one path: a processing :class:`Resolution`, fit, resize, pad,
                run, mirror, back to the photo's size
``fast``        the inference copy: BatchNorm folded, fused convolutions, channels-last,
                the precision (the fastest here of those that keep the model's quality)
``folding``     BatchNorm folded into the convolution before it
``int8``        quantised 3x3 convolutions with calibrated activation scales
``compiled``    torch.compile, warmed up in the background, used where measured faster
==============  ======================================================================
"""
from mtan.inference.pipeline import PhotoView, Resolution, fitted, resize, to_tensor

__all__ = ["PhotoView", "Resolution", "fitted", "resize", "to_tensor"]
