"""Lets `python bench/<script>.py` work from a fresh clone: re-run the script in the project's venv
(created and pinned by run.py) unless it already runs there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reexec_in_venv(script: str) -> None:
    sys.path.insert(0, str(ROOT))
    import run  # the bootstrap: stdlib only

    if Path(sys.prefix).resolve() == run.VENV.resolve():
        return
    run.ensure_venv()
    os.execv(str(run.PY), [str(run.PY), script, *sys.argv[1:]])
