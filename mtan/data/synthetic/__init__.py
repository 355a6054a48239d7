"""Procedural CityScapes-like street frames with exact labels and depth.

Every frame is a small 3-D street built from simple primitives (a ground plane, axis-aligned
boxes, vertical and horizontal cylinders, ellipsoids) and ray-cast from a camera mounted on a
car.  The renderer returns, for every pixel, the colour, the CityScapes 7-category label of the
nearest surface, and its inverse depth in the convention of the MTAN CityScapes release
(``v = 1.85 / z`` with ``z`` the distance in metres along the optical axis; sky = 0).

How a frame is made (read the files in this order):

0. ``scene.py``: the constants (label values, the inverse-depth convention, distances), the
   camera, light, street and primitive records, the colour palettes and the value noise.
1. ``street.py``, :func:`_build_scene`, draws a street from a per-frame random generator: road width and lanes,
   sidewalks with kerbs, building facades (or walls, fences, parks, parking lots, cross streets)
   on both sides, trees, street lamps, signs and traffic lights, pedestrians and cyclists,
   parked and moving vehicles, a distant backdrop, the sun, the sky and the camera.
2. ``raycast.py``, :func:`_cast`, intersects camera rays with all primitives.  Each primitive is first bounded
   by its screen-space rectangle, so a ray is only tested against the few primitives that can
   cover its pixel; the tests run as flat numpy arrays of (ray, primitive) pairs and the nearest
   hit wins.
3. ``shading.py``, :func:`_shade`, looks up procedural textures (window grids, paving, lane markings, foliage,
   car lights...), lights them with the sun (Lambert, exact cast shadows from shadow rays,
   bounded the same way in the plane perpendicular to the sun: :func:`_visibility`) and the
   sky (darker under cars and trees), mirrors the sky in glass and paint, and adds haze.
4. ``shading.py``, :func:`_develop`, plays the camera: auto exposure with jitter, white balance, tone curve,
   slight blur, vignetting and sensor noise.

``frames.py`` puts the steps together (:func:`render_frame`) and writes batches, releases and
preview sheets; ``cli.py`` is the command line.

Everything is vectorised numpy (no per-pixel Python loops) and deterministic: frame ``index``
of ``seed`` always comes from ``numpy.random.default_rng([seed, index])`` and does not depend
on the output size (only the pixel grid changes).

Command line (``python -m mtan.data.synthetic --help``)::

    python -m mtan.data.synthetic --out data/synthetic --train 3000 --val 500 --size 128x256
    python -m mtan.data.synthetic --preview docs/synthetic_preview.png
"""
from __future__ import annotations
from __future__ import annotations

from mtan.data.synthetic.cli import build_parser, main
from mtan.data.synthetic.frames import (RELEASE_FIELDS, SPLIT_STREAMS, colourise_labels, generate, preview,
                                        render_frame, write_release)
from mtan.data.synthetic.scene import (CONSTRUCTION, FLAT, GENERATOR_VERSION, HUMAN, INVERSE_DEPTH_SCALE,
                                       MAX_INVERSE_DEPTH, NATURE, NUM_CLASSES, OBJECT, SKY, VEHICLE, Camera, Lighting,
                                       Scene, Street)

__all__ = ["render_frame", "generate", "write_release", "preview", "colourise_labels", "main", "build_parser",
           "RELEASE_FIELDS", "SPLIT_STREAMS", "GENERATOR_VERSION", "INVERSE_DEPTH_SCALE", "MAX_INVERSE_DEPTH",
           "NUM_CLASSES", "FLAT", "CONSTRUCTION", "OBJECT", "NATURE", "SKY", "HUMAN", "VEHICLE",
           "Camera", "Lighting", "Scene", "Street"]
