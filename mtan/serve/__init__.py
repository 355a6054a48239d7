"""Serving photos: everything between an upload and the answer, without gradio.

=====================  ==================================================================
module                 job
=====================  ==================================================================
``sources``            where a model comes from (folder or Hub id), the device, Hub reachability
``registry``           the models on offer, each loaded once, with a fallback to the local default
``images``             a visitor's file checked from its header, decoded, upright, RGB, downscaled
``jpeg``               what a JPEG asks of its decoder, read from its markers
``prediction``         the network on one photo: outputs at the photo's size, compact masks
``render``             the pictures: overlays, legends, coloured depth, normals, mask heat maps
``video``              street clips frame by frame, and the live webcam's frames
``scene3d``            a photo's depth as a scene in metres: a mesh (GLB) and a point cloud (PLY)
``downloads``          the files to download and the folders they live in
``examples``           the example photos and the cache that answers them at once
``guard``, ``uploads`` every request's values checked; which files a request may make the app read
``process``            the server process: malloc arenas, memory trimming, path-free messages
=====================  ==================================================================

The app (``app.py``) uses the names below; gradio turns :class:`ImageLoadError` and
:class:`ModelUnavailableError` into messages for the visitor.
"""
from mtan.records import ResolutionAdvice
from mtan.serve.examples import EXAMPLES_DIR, ExampleCache, example_files, file_digest
from mtan.serve.images import (DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PIXELS, ImageLoadError, configure_pil,
                               load_image, processing_notes, to_rgb)
from mtan.serve.prediction import TASK_OUTPUTS, Prediction, labels_at, predict_photo, quantise_mask, shrink_masks
from mtan.serve.process import freed_memory_for, keep_freed_memory, release_memory, tune_malloc, without_paths
from mtan.serve.registry import LoadedModel, ModelRegistry, ModelUnavailableError, load_default_model
from mtan.runtime import pick_device
from mtan.serve.sources import DEFAULT_MODEL_DIR, REPO_ROOT, host_reachable, hub_reachable, model_label

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_PIXELS", "DEFAULT_MODEL_DIR", "EXAMPLES_DIR", "REPO_ROOT", "ExampleCache",
    "ImageLoadError", "LoadedModel", "TASK_OUTPUTS", "ModelRegistry", "ModelUnavailableError", "Prediction", "ResolutionAdvice",
    "configure_pil", "example_files", "file_digest", "host_reachable", "hub_reachable", "labels_at",
    "load_default_model", "load_image", "model_label", "pick_device", "predict_photo",
    "processing_notes", "quantise_mask", "freed_memory_for", "keep_freed_memory", "release_memory", "shrink_masks", "to_rgb", "tune_malloc", "without_paths",
]
