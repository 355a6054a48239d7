"""What a JPEG file asks of its decoder, read from its markers before a pixel is decoded.

A JPEG's header gives its size, but not its cost. A progressive (or multi-scan sequential) file
is decoded one scan at a time into a buffer of every DCT coefficient at full size, whatever
scale it is drawn at, and nothing in the format limits the number of scans: a small file can
repeat one scan thousands of times and keep a decoder busy for minutes. :func:`read_layout`
walks the markers (skipping each scan's entropy-coded data with one regular-expression search)
and reports the frame size and the scans, so that a caller can refuse a file before decoding it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# Start-of-frame markers (C4 = DHT, C8 = JPG, CC = DAC are not frames).
FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
PROGRESSIVE_FRAMES = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
STANDALONE = frozenset({0x01, SOI, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length field

# A marker: one or more 0xFF fill bytes, then a code that is neither a stuffed zero nor a restart
# marker (restart markers sit inside the entropy-coded data of a scan).
_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")


class JpegStructureError(ValueError):
    """The file's markers ask for more work than allowed (the message says which limit)."""


@dataclass(frozen=True)
class JpegLayout:
    width: int
    height: int
    components: int
    progressive: bool
    scans: int       # start-of-scan segments of the first image (at most ``max_scans + 1`` counted)
    segments: int    # marker segments walked

    @property
    def multi_scan(self) -> bool:
        """Decoded through a full-size coefficient buffer (progressive, or several sequential scans)."""
        return self.progressive or self.scans > 1


def read_layout(data: bytes, max_scans: int, max_segments: int = 4096) -> JpegLayout | None:
    """The frame and scans of the first image in ``data``; None if ``data`` is not a JPEG or has
    no frame header. Stops counting (and raises :class:`JpegStructureError`) past ``max_scans``
    scans or ``max_segments`` marker segments, so the walk itself is bounded.
    """
    if data[:2] != b"\xff\xd8":
        return None
    view = memoryview(data)
    pos, scans, segments = 2, 0, 0
    frame: tuple[int, int, int, bool] | None = None
    while True:
        m = _MARKER.search(data, pos)
        if m is None:  # truncated: the decoder will say so
            break
        code, pos = m.group(1)[0], m.end()
        if code == EOI:
            break
        if code in STANDALONE:
            continue
        if pos + 2 > len(data):
            break
        length = int.from_bytes(view[pos: pos + 2], "big")
        segments += 1
        if segments > max_segments:
            raise JpegStructureError(f"more than {max_segments:,} marker segments")
        if code in FRAME_MARKERS and frame is None and length >= 8 and pos + 8 <= len(data):
            height = int.from_bytes(view[pos + 3: pos + 5], "big")
            width = int.from_bytes(view[pos + 5: pos + 7], "big")
            frame = (width, height, data[pos + 7], code in PROGRESSIVE_FRAMES)
        pos += length
        if code == SOS:
            scans += 1
            if scans > max_scans:
                raise JpegStructureError(f"more than {max_scans} scans")
            # The entropy-coded data runs to the next marker; the search at the loop's top skips it.
    if frame is None:
        return None
    width, height, components, progressive = frame
    return JpegLayout(width, height, components, progressive, scans, segments)
