"""Reading an image file's bytes and checking, cheaply but for real, that they decode.

Arrow rows store the encoded bytes untouched (ViLT's format); a file that PIL cannot decode would
only fail much later inside a training data loader, so it is caught here.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

# Decoding at reduced size is enough to prove the data decodes: JPEG's DCT scaling makes a draft
# decode of a large photo ~8x cheaper than a full one.
_DRAFT_SIZE = (64, 64)


class ImageError(Exception):
    """An image cannot be used; ``reason`` is a short phrase for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_image(path: Path) -> bytes:
    """The file's bytes, after opening and decoding them with PIL.

    Raises:
        ImageError: the file is missing, unreadable, or not a decodable image.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError("missing image file") from None
    except OSError as err:
        raise ImageError(f"unreadable image file ({err.strerror})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft("RGB", _DRAFT_SIZE)
            img.load()
    # PIL signals malformed data with many types (OSError, SyntaxError, ValueError, EOFError,
    # struct.error, DecompressionBombError); whichever it is, the image is unusable.
    except Exception as err:
        raise ImageError(f"corrupt image ({type(err).__name__}: {err})") from None
    return data
