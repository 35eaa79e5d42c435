"""Builds the scale set: a help centre of 2,000 pages from tldr-pages (CC BY 4.0), with questions whose page is known.

    python bench/make_scale_set.py PATH/TO/tldr-checkout [--commands 1000] [--questions 300]

tldr-pages (https://github.com/tldr-pages/tldr) documents command-line tools, one page per command, each a short
summary and a list of tasks ("- Extract an archive into a directory:" and the command for it), in English and, for
most commands, Korean. Its text is licensed CC BY 4.0, so it may be redistributed with attribution
(knowledge/scale/NOTICE). The help centre here is `--commands` commands present in both languages
(pages/common and pages.ko/common, picked in a fixed hashed order), one page per command and language:
knowledge/scale/{en,ko}/<command>.md, with front matter as any help centre's.

The questions (knowledge/eval/scale.json): half Korean, half English, each a task description that occurs on exactly
one page of its language in the whole set (so its page is known), asked without the command's name and without the
page's bracket hints ("E[x]tract" → "extract"); English ones as "how do i …". Both language versions of the command
count as its page. What it measures is ranking among 2,000 pages of close neighbours (hundreds of tools that copy,
list, compress or show help), which is where a fused ranking and its thresholds lost to their own dense leg on a
real help centre; it is not a test of shoppers' wording (fresh.json is).

Run `sixshop-agent eval --dataset knowledge/eval/scale.json --knowledge knowledge/scale` to measure on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "knowledge" / "scale"
CASES = ROOT / "knowledge" / "eval" / "scale.json"
_TASK = re.compile(r"^- (.+?):?\s*$", re.M)
_HINT = re.compile(r"\[([^\]]{1,3})\]")
_LINK = re.compile(r"^> (?:More information|더 많은 정보): <(.+?)>\.?$", re.M)


def git_show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True,
                          text=True).stdout


def listing(repo: Path, folder: str) -> set[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", f"HEAD:{folder}"], check=True,
                         capture_output=True, text=True).stdout
    return {name[:-3] for name in out.split() if name.endswith(".md")}


def tasks(page: str) -> list[str]:
    return [_HINT.sub(r"\1", t).strip() for t in _TASK.findall(page)]


def as_help_page(command: str, page: str, language: str) -> str:
    """A tldr page as a help centre's Markdown page: front matter, the title, the summary, each task a paragraph."""
    link = _LINK.search(page)
    url = link.group(1) if link else f"https://tldr.inbrowser.app/pages/common/{command}"
    body = _HINT.sub(r"\1", page.split("\n", 1)[1] if page.startswith("# ") else page)
    body = re.sub(r"^> ", "", body, flags=re.M)
    return f"---\ntitle: {command}\nurl: {url}\naudience: all\nlanguage: {language}\n---\n# {command}\n{body}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tldr", type=Path, help="a git checkout of tldr-pages/tldr")
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=300)
    args = parser.parse_args()
    named = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # file names any tool takes
    both = sorted({c for c in listing(args.tldr, "pages/common") & listing(args.tldr, "pages.ko/common")
                   if named.match(c)},
                  key=lambda c: hashlib.sha256(c.encode()).hexdigest())[: args.commands]
    pages = {(lang, c): git_show(args.tldr, f"{folder}/common/{c}.md")
             for c in both for lang, folder in (("en", "pages"), ("ko", "pages.ko"))}
    for (lang, command), page in pages.items():
        target = OUT / lang / f"{command}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(as_help_page(command, page, lang), encoding="utf-8")
    cases = []
    for lang in ("ko", "en"):
        counts = Counter(t.lower() for (lg, _), p in pages.items() if lg == lang for t in tasks(p))
        wanted = args.questions // 2
        for command in sorted(both, key=lambda c: hashlib.sha256(f"q-{c}".encode()).hexdigest()):
            if wanted == 0:
                break
            unique = [t for t in tasks(pages[(lang, command)]) if counts[t.lower()] == 1
                      and command.lower() not in t.lower() and len(t) >= 12]
            if not unique:
                continue
            task = unique[0]
            question = task if lang == "ko" else f"how do i {task[0].lower()}{task[1:]}"
            cases.append({"id": f"sc-{lang}-{len(cases) + 1:03d}", "kind": "single", "turns": [question],
                          "page": [f"{lang}/{command}.md", f"{'en' if lang == 'ko' else 'ko'}/{command}.md"],
                          "facts": [], "audience": "shopper"})
            wanted -= 1
    about = (f"Scale set: {len(both) * 2} pages of tldr-pages (CC BY 4.0, knowledge/scale/NOTICE), "
             f"{len(cases)} questions whose page is known (a task described on exactly one page), built by "
             "bench/make_scale_set.py; used only to measure retrieval at the size of a real help centre.")
    CASES.write_text(json.dumps({"about": about, "knowledge": "knowledge/scale", "cases": cases}, ensure_ascii=False,
                                indent=1) + "\n", encoding="utf-8")
    revision = subprocess.run(["git", "-C", str(args.tldr), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    (OUT / "NOTICE").write_text(
        "The pages under this folder are adapted from tldr-pages "
        "(https://github.com/tldr-pages/tldr, revision " + revision + "), copyright © 2014—present the tldr-pages "
        "team and contributors, licensed under the Creative Commons Attribution 4.0 International License "
        "(https://creativecommons.org/licenses/by/4.0/). Changes: front matter added, the page's summary "
        "unquoted, bracket hints removed; built by bench/make_scale_set.py.\n", encoding="utf-8")
    print(f"{len(pages)} pages in {OUT.relative_to(ROOT)}, {len(cases)} questions in {CASES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
