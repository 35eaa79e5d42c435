"""What checking a browser's credential costs per request, in the process alone: verifying a session token
(PyJWT HS256: header, signature, claims) and the origin check against a store's cached settings, beside a server
key found in the authenticator's cache. The whole-turn figure, with the first-token overhead of a session token
against a key, is bench/turn_cost.py --credential session-token.

    python bench/token_cost.py [--rounds 20000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from server.services.auth import Authenticator, Principal
from server.services.tokens import SessionTokens, parse_secrets


class _Settings:
    """A store's settings as the cache holds them (no database on the way)."""

    async def for_turn(self, store_id: str) -> dict[str, Any]:
        return {"allowed_origins": ["https://shop.example"]}


class _Keys:
    async def any_active(self) -> bool:
        return True


def _time(call: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def _atime(call: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def main_async(rounds: int) -> None:
    tokens = SessionTokens(parse_secrets("k1:" + "s" * 48), issuer="sixshop-ai-agent", ttl_s=3600)
    token = tokens.issue("shop", uuid.uuid4())
    auth = Authenticator(_Keys(), production=True, default_turns_per_minute=0, tokens=tokens,  # type: ignore[arg-type]
                         store_settings=_Settings())  # type: ignore[arg-type]
    auth._found["sk-sixshop-cached"] = (time.monotonic() + 3600, Principal(uuid.uuid4(), "shop", kind="key"))
    auth.cache_s = 1e9
    rows = {
        "verify a session token (PyJWT)": _time(lambda: tokens.verify(token), rounds),
        "the whole check: token + origin": await _atime(
            lambda: auth.principal(f"Bearer {token}", "https://shop.example"), rounds),
        "a server key from the cache": await _atime(lambda: auth.principal("Bearer sk-sixshop-cached"), rounds),
    }
    print(f"## {rounds} checks each, one process, microseconds")
    for name, values in rows.items():
        values.sort()
        print(f"{name:<34} p50 {statistics.median(values):7.1f}  p99 {values[int(0.99 * len(values))]:7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    asyncio.run(main_async(parser.parse_args().rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
