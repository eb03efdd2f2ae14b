"""Test JWTs for Envoy's `jwt_authn`: a key, its JWKS, and tokens signed with it.

HS256 with an `oct` JWKS key, which Envoy 1.40's jwt_authn verifies from a local JWKS
(`local_jwks.inline_string`), so the standard library signs: no crypto dependency. A
shared secret is fine for a test issuer; a real deployment uses an asymmetric key and
its identity provider's JWKS (`remote_jwks`), with the same filter configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

ISSUER = "https://issuer.budgets.test"
AUDIENCE = "llm-gateway"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    """One HS256 key: `jwks()` is what Envoy trusts, `sign()` what a client presents."""

    kid: str
    secret: bytes

    def jwks(self) -> str:
        """The JWKS JSON holding this key, for `local_jwks.inline_string`."""
        key = {"kty": "oct", "kid": self.kid, "alg": "HS256", "k": _b64url(self.secret)}
        return json.dumps({"keys": [key]}, separators=(",", ":"))

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS over `claims` exactly as given."""
        signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': self.kid})}.{_segment(claims)}"
        signature = hmac.new(self.secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def token(self, sub: str, team: str | None = None, *, expires_in: int = 3600, **claims: Any) -> str:
        """A token Envoy accepts: our issuer and audience, valid for `expires_in` seconds."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + expires_in,
        }
        if team is not None:
            payload["team"] = team
        payload.update(claims)
        return self.sign(payload)


def new_key(kid: str = "test-key") -> SigningKey:
    return SigningKey(kid, secrets.token_bytes(32))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
