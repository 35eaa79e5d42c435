"""Browser credentials that are JWTs, signed and checked with PyJWT (HS256; nothing hand-rolled).

- Session tokens: the service signs them with SESSION_TOKEN_SECRET for a session opened in a browser. Claims `iss`,
  `aud` (the store), `sub` (the session), `kind` (anonymous | verified), `user` (a verified shopper's id), `iat`,
  `exp`, `jti`; header `kid`. Rotation: the setting lists `kid:secret` pairs, the first signs, every one listed
  verifies, so an old `kid` is accepted until it is removed.
- Identity tokens: a store's backend signs one for its logged-in shopper with the store's `identity_secret` (a
  write-only store setting, a `kid` per secret): `sub` its user id, `iat`, `exp` at most 10 minutes after `iat`.

PyJWT compares HMAC signatures with hmac.compare_digest (constant time); tests/test_shoppers.py checks it is the
comparison our checks go through.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from server.errors import InvalidIdentity, InvalidToken, TokenExpired

ALGORITHM = "HS256"
IDENTITY_MAX_SECONDS = 600  # a store's identity token lives at most 10 minutes
LEEWAY_S = 30  # clocks of a store's backend and ours may differ a little


def kid_of(secret: str) -> str:
    """A secret given without a kid is named by a digest of it (stable, and says nothing of the secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def parse_secrets(value: str) -> list[tuple[str, str]]:
    """SESSION_TOKEN_SECRET: `secret`, or `kid:secret` pairs separated by commas, the signing one first."""
    pairs: list[tuple[str, str]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        kid, sep, secret = part.partition(":")
        pairs.append((kid, secret) if sep and kid and secret else (kid_of(part), part))
    if not pairs:
        raise ValueError("SESSION_TOKEN_SECRET names no secret")
    for kid, secret in pairs:
        if len(secret) < 32:
            raise ValueError(f"SESSION_TOKEN_SECRET: the secret of kid {kid!r} is shorter than 32 characters")
    return pairs


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


@dataclass(frozen=True)
class SessionClaims:
    store_id: str
    session_id: uuid.UUID
    kind: Literal["anonymous", "verified"]
    user_id: str | None
    expires: int


class SessionTokens:
    def __init__(self, secrets: list[tuple[str, str]], *, issuer: str, ttl_s: int) -> None:
        self.secrets = dict(secrets)
        self.signing_kid, self.signing_secret = secrets[0]
        self.issuer = issuer
        self.ttl_s = ttl_s

    def issue(self, store_id: str, session_id: uuid.UUID, user_id: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": store_id, "sub": str(session_id),
                                  "kind": "verified" if user_id else "anonymous", "iat": now,
                                  "exp": now + self.ttl_s, "jti": uuid.uuid4().hex}
        if user_id:
            claims["user"] = user_id
        return jwt.encode(claims, self.signing_secret, algorithm=ALGORITHM, headers={"kid": self.signing_kid})

    def verify(self, token: str) -> SessionClaims:
        """The token's claims; 401 token_expired past `exp`, 401 invalid_token for anything else wrong (signature,
        kid, issuer, shape)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            secret = self.secrets.get(kid) if isinstance(kid, str) else None
            if secret is None:
                raise InvalidToken("This session token was not signed with a key this service holds")
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=self.issuer,
                                options={"require": ["iss", "aud", "sub", "exp", "iat", "jti"], "verify_aud": False})
            kind = claims.get("kind")
            user = claims.get("user")
            if kind not in ("anonymous", "verified") or (kind == "verified") != isinstance(user, str) or \
                    not isinstance(claims["aud"], str):
                raise InvalidToken("This session token's claims are not ones this service issues")
            return SessionClaims(claims["aud"], uuid.UUID(claims["sub"]), kind, user, int(claims["exp"]))
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise InvalidToken() from None


def verify_identity(token: str, secrets: dict[str, str]) -> str:
    """A store backend's identity token checked against the store's identity secrets (kid → secret): its user id.
    401 invalid_identity when forged, expired, too long-lived, for a kid the store does not hold, or when the store
    has no secret (a shopper's identity can only be vouched for by a store that set one)."""
    try:
        if not secrets:
            raise InvalidIdentity("This store verifies no identities (no identity_secret is set)")
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(secrets) == 1:
            secret = next(iter(secrets.values()))
        elif isinstance(kid, str) and kid in secrets:
            secret = secrets[kid]
        else:
            raise InvalidIdentity("The identity's kid names no identity secret of this store")
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                            options={"require": ["sub", "exp", "iat"], "verify_aud": False})
        if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= 256:
            raise InvalidIdentity("The identity's sub must be the store's user id (1 to 256 characters)")
        if not isinstance(claims["exp"], int | float) or not isinstance(claims["iat"], int | float) or \
                claims["exp"] - claims["iat"] > IDENTITY_MAX_SECONDS:
            raise InvalidIdentity(f"An identity token may live at most {IDENTITY_MAX_SECONDS} seconds (exp - iat)")
        return str(claims["sub"])
    except InvalidIdentity:
        raise
    except jwt.ExpiredSignatureError:
        raise InvalidIdentity("The identity token has expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise InvalidIdentity() from None
