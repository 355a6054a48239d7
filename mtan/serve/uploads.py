"""Which files a request may make the app read, and reading them without trusting the request.

A request to a gradio event names its file by a server path. The app reads a file only if it is
a regular file that gradio stored from an upload (in gradio's upload folder, outside the app's
own output folders; gradio copies the example photos there too), of at most the upload limit: checked from the
file's metadata before it is opened, and again on the open file. Every other path gets the same
message, so an answer never tells whether a path exists on the server.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

NOT_UPLOADED = "This request names a file that was not uploaded to this app: upload a photo (or pick an example)."
MAX_PATH_CHARS = 4096


class UploadRefused(ValueError):
    """A request's file cannot be used; the message is for the visitor (no server paths in it)."""


def megabytes(n: int) -> str:
    """A byte count as gradio's sizes read (``25mb`` = 25 x 1024 x 1024 bytes): "25 MB", "2.5 MB"."""
    return f"{n / 2**20:,.1f}".removesuffix(".0") + " MB"


@dataclass(frozen=True)
class UploadPolicy:
    """The files requests may name: under ``upload_root`` but not under any of ``excluded``; at
    most ``max_bytes`` each."""

    upload_root: Path
    max_bytes: int
    excluded: tuple[Path, ...] = ()
    noun: str = "photo"          # what the files are, in the messages ("photo", "video clip")

    @classmethod
    def create(cls, upload_root: str | os.PathLike, max_bytes: int, excluded=(), noun: str = "photo") -> "UploadPolicy":
        return cls(Path(os.path.realpath(upload_root)), int(max_bytes),
                   tuple(Path(os.path.realpath(p)) for p in excluded), noun)

    @property
    def not_uploaded(self) -> str:
        """The one message for every path a request may not read (it never says whether it exists)."""
        if self.noun == "photo":
            return NOT_UPLOADED
        return f"This request names a file that was not uploaded to this app: upload a {self.noun}."

    def too_large(self) -> UploadRefused:
        return UploadRefused(f"The file is too large: this app accepts {self.noun}s of up to "
                             f"{megabytes(self.max_bytes)}. Upload a smaller {self.noun}.")

    def check(self, path) -> Path:
        """The real path of an allowed file, from its metadata alone (nothing is opened), or
        :class:`UploadRefused`. Refused: anything but a plain path string (URLs, ``data:``),
        symbolic links, devices, pipes, folders, files outside the allowed places, too large files.
        A stored upload over this kind's limit is removed as it is refused (gradio's own upload
        limit is the largest of all kinds', so it stored the file)."""
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or "\0" in path:
            raise UploadRefused(self.not_uploaded)
        if ":" in path.split("/", 1)[0] or "://" in path:  # data:..., file:..., http://...
            raise UploadRefused(self.not_uploaded)
        absolute = Path(os.path.abspath(path))
        try:
            real = Path(os.path.realpath(absolute))
            info = os.lstat(absolute)
        except (OSError, ValueError):
            raise UploadRefused(self.not_uploaded) from None
        allowed = (real.is_relative_to(self.upload_root) and real != self.upload_root
                   and not any(real.is_relative_to(folder) for folder in self.excluded))
        if not allowed or not stat.S_ISREG(info.st_mode):
            raise UploadRefused(self.not_uploaded)
        if info.st_size > self.max_bytes:
            try:
                os.unlink(real)
            except OSError:
                pass
            raise self.too_large()
        return real

    def read(self, path) -> bytes:
        """The bytes of an allowed file (see :meth:`check`), read through a descriptor that is
        checked again (regular file, size) before more than ``max_bytes`` + 1 bytes are read."""
        real = self.check(path)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError:
            raise UploadRefused(self.not_uploaded) from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UploadRefused(self.not_uploaded)
            if info.st_size > self.max_bytes:
                raise self.too_large()
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:  # it grew since
            raise self.too_large()
        return data


INLINE_PHOTO = re.compile(r"data:image/(jpeg|jpg|png|webp);base64,", flags=re.I)


def inline_photo_chars(max_bytes: int) -> int:
    """The longest ``data:`` text that can hold a photo of ``max_bytes`` (base64: 4 characters per 3 bytes)."""
    return 4 * -(-max_bytes // 3) + 64


def inline_photo(text: str, max_bytes: int, examples: dict[str, Path]) -> tuple[bytes, str]:
    """A photo sent as text (the MCP tool's input): a ``data:image/...;base64,`` URL of a JPEG, PNG
    or WebP of at most ``max_bytes``, or the file name of one of ``examples``. Returns the file's
    bytes and a name. The length is checked before anything is decoded; a web address is refused
    (the app does not fetch anything on a caller's behalf)."""
    if not isinstance(text, str) or not text.strip():
        raise UploadRefused("Send the photo as a data URL (data:image/jpeg;base64,...) or name an example photo.")
    text = text.strip()
    if text in examples:
        return examples[text].read_bytes(), text
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise UploadRefused("This app does not fetch web addresses: send the photo itself as a data URL "
                            "(data:image/jpeg;base64,...) or name an example photo.")
    head = INLINE_PHOTO.match(text)
    if head is None:
        shown = ", ".join(sorted(examples)) or "none"
        raise UploadRefused(f"The photo must be a data URL of a JPEG, PNG or WebP image (data:image/jpeg;base64,...) "
                            f"or the name of an example photo ({shown}).")
    if len(text) > inline_photo_chars(max_bytes):
        raise UploadRefused(f"This photo is larger than this app's limit of {megabytes(max_bytes)}.")
    try:
        data = base64.b64decode(text[head.end():], validate=True)
    except (binascii.Error, ValueError):
        raise UploadRefused("This data URL is not valid base64.") from None
    if len(data) > max_bytes:
        raise UploadRefused(f"This photo is larger than this app's limit of {megabytes(max_bytes)}.")
    return data, f"photo.{head.group(1).lower().replace('jpg', 'jpeg')}"
