"""Lets `python bench/<script>.py` work from a fresh clone: re-run the script in the project's venv
(created and pinned by run.py) unless it already runs there; then put the project on sys.path."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reexec_in_venv(script: str) -> None:
    sys.path.insert(0, str(ROOT))
    import run  # the bootstrap: stdlib only

    if Path(sys.prefix).resolve() != run.VENV.resolve():
        run.ensure_venv()
        os.execv(str(run.PY), [str(run.PY), script, *sys.argv[1:]])
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # embedded PostgreSQL as root
