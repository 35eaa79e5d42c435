"""Many answers open at once on one server: the short version of `bench/streams.py` (1,000 streams there)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def test_forty_streams_open_at_once_all_answered() -> None:
    """40 turns started within a second on one worker, each streaming an 8 s answer from the slow model (the bench's
    own runs take 29 s answers): all 40 are open together, every one ends with `done`, none with an error; the
    script reports RSS and CPU."""
    out = subprocess.run([sys.executable, "bench/streams.py", "--streams", "40", "--ramp-seconds", "1",
                          "--token-ms", "500"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^open at once \(peak\)\s+40$", out.stdout, re.M), out.stdout
    assert re.search(r"^answers done\s+40\s+errors 0$", out.stdout, re.M), out.stdout
    rss = re.search(r"^server RSS MB\s+idle ([\d,]+)\s+peak ([\d,]+)$", out.stdout, re.M)
    assert rss is not None and int(rss[2].replace(",", "")) >= int(rss[1].replace(",", "")) > 0, out.stdout
