"""Where the checkout's config files are: the project root this package runs from.

Library code reads conf/ through these functions, never relative to the working directory, so the
API, the console command and a notebook find the same files as the pipeline run from the root.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout this package runs from (src/backlens/ -> the root), or $BACKLENS_ROOT."""
    return Path(os.environ.get("BACKLENS_ROOT") or Path(__file__).resolve().parents[2])


def config_dir(group: str) -> Path:
    """conf/<group>/ of the project root."""
    return project_root() / "conf" / group
