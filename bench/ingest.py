"""How fast `sixshop-agent ingest` fills the index with the local model (no key): a generated help centre of N
articles (default 2,700, about 1.4 M characters, like the real one it stands for), ingested into a throwaway
PostgreSQL, once with the passages embedded on one thread and once on every core (INGEST_EMBEDDING_THREADS=0),
in batches. Prints documents, chunks, seconds and chunks per second for each.

    python bench/ingest.py [--articles 2700] [--threads 1 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import os
import random
import re
import subprocess
import tempfile
import time

from bench._throwaway import throwaway_postgres

ROOT = Path(__file__).resolve().parent.parent


def sentences() -> list[str]:
    """The sample help centre's sentences, both languages: the material the articles are made of."""
    out = []
    for page in sorted((ROOT / "knowledge" / "sample").rglob("*.md")):
        body = page.read_text(encoding="utf-8").split("---", 2)[-1]
        for line in body.splitlines():
            if line and not line.startswith("#"):
                out.extend(s.strip() for s in re.split(r"(?<=[.다])\s+", line) if len(s.strip()) > 20)
    return out


def generate(folder: Path, articles: int, seed: int = 7) -> int:
    """`articles` Markdown files of about 520 characters (one in ten over a chunk's 1,200), numbers varied; their
    total length."""
    rng = random.Random(seed)
    pool = sentences()
    total = 0
    for i in range(articles):
        target = 1500 if i % 10 == 0 else 520
        text = ""
        while len(text) < target:
            text += re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(0, 9)), rng.choice(pool)) + " "
        body = f"---\ntitle: Article {i}\n---\n# Article {i}\n\n## Answer\n{text.strip()}\n"
        (folder / f"a{i:05d}.md").write_text(body, encoding="utf-8")
        total += len(text)
    return total


def ingest(folder: Path, threads: int) -> tuple[float, str]:
    with throwaway_postgres() as pg:
        env = {**os.environ, "DATABASE_URL": pg.conninfo, "EMBEDDINGS": "local", "VECTOR_STORE": "auto",
               "OPENAI_API_KEY": "", "INGEST_EMBEDDING_THREADS": str(threads), "INGEST_SAMPLE_IF_EMPTY": "false",
               "LOG_LEVEL": "WARNING"}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "server.cli", "ingest", str(folder)], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        return time.perf_counter() - t0, done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=2700)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: every core")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sixshop-bench-articles-"))
    chars = generate(folder, args.articles)
    print(f"## {args.articles} articles, {chars:,} characters, local embeddings, {os.cpu_count()} cores")
    for threads in args.threads:
        seconds, line = ingest(folder, threads)
        print(f"threads {threads or 'all'}: {seconds:.1f} s wall (CLI included) | {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
