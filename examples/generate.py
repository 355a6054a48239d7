"""Write the app's example photos: generated street scenes (our own, no third-party images).

    python examples/generate.py            # 8 frames at 384x768 into examples/
"""
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mtan.data.synthetic import render_frame  # noqa: E402

# The first 8 frames of seed 2026: crossings, parked cars, buses, cyclists, trees, wide and narrow streets.
SEED, INDICES, SIZE = 2026, range(8), (384, 768)

if __name__ == "__main__":
    out = Path(__file__).resolve().parent
    for n, i in enumerate(INDICES):
        frame = render_frame(SEED, i, *SIZE)
        Image.fromarray(frame["image"]).save(out / f"street_{n + 1:02d}.jpg", quality=90)
        print(f"wrote {out / f'street_{n + 1:02d}.jpg'}")
