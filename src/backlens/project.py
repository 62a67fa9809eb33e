"""Where backlens finds its configs and the pipeline's files, in a checkout or installed from a wheel.

Library code reads configs through these functions, never relative to the working directory, so the
API, the console command and a notebook find the same files as the pipeline run from the root.
The groups the library reads (``backlens.conf.GROUPS``) ship inside the package; the others
(dataset, analysis, editing, ...) belong to the pipeline and live in the checkout's ``conf/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from backlens.cache import cache_folder
from backlens.conf import FOLDER as PACKAGE_CONF
from backlens.conf import GROUPS as PACKAGE_GROUPS


def project_root() -> Path:
    """The checkout this package runs from (src/backlens/ -> the root), or $BACKLENS_ROOT."""
    return Path(os.environ.get("BACKLENS_ROOT") or Path(__file__).resolve().parents[2])


def in_checkout() -> bool:
    """Whether the package runs from a checkout (or $BACKLENS_ROOT names one): an installed wheel's
    parents[2] is site-packages' parent, which has no Snakefile."""
    root = project_root()
    return (root / "Snakefile").is_file() and (root / "conf" / "config.yaml").is_file()


def config_dir(group: str) -> Path:
    """The folder of config group ``group``: inside the package for the groups the library reads,
    else conf/<group>/ of the project root."""
    return PACKAGE_CONF / group if group in PACKAGE_GROUPS else project_root() / "conf" / group


def files_root() -> Path:
    """What the pipeline's relative paths (``results/<model>/...``) are relative to: the checkout;
    outside one, the cache folder (``$BACKLENS_CACHE``, see backlens.cache), or the working
    directory when caching is off. The API reads the FF2 statistics from here."""
    if in_checkout():
        return project_root()
    return cache_folder() or Path.cwd()
