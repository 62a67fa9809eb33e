"""PNG copies of the default run's figures for the README gallery (docs/gallery/), at most MAX_WIDTH wide.

    python -m backlens.figures.gallery figures/smollm2-135m/fig5.png docs/gallery/fig5.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from backlens.io import atomic_path

# About twice the width GitHub shows a full-width README image at (~900 px), for high-density screens.
MAX_WIDTH = 1800


def thumbnail(source: str | Path, target: str | Path, max_width: int = MAX_WIDTH) -> None:
    """``source`` scaled down to at most ``max_width`` pixels wide (never up), written atomically."""
    with Image.open(source) as image:
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        with atomic_path(Path(target)) as tmp:
            image.save(tmp, format="PNG", optimize=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m backlens.figures.gallery SOURCE.png TARGET.png")
    thumbnail(sys.argv[1], sys.argv[2])
