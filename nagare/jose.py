"""JSON Web Tokens as OpenID Connect ID tokens use them: parsing, the RS256 and ES256 signature
checks against a provider's JSON Web Keys, and the claim checks (with `now` passed in).

Only verification, so only public data is handled: timing does not leak a secret and plain
Python integers suffice. RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2.2: one modular
exponentiation, then the encoded message compared whole); ES256 is ECDSA over NIST P-256 with
SHA-256 (SEC 1 §4.1.4, affine point arithmetic). `none`, the HMAC algorithms and anything else
are refused, as is a key whose type does not match the token's algorithm.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nagare.errors import NagareError

ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
LEEWAY_SECONDS = 60.0


class TokenError(NagareError):
    """A token, a key or a claim failed a check; the message says which and why."""

    code = "invalid_token"
    status = 401


# ---------------------------------------------------------------- encodings


def b64url_decode(text: str) -> bytes:
    """Base64url without padding (RFC 7515 §2); TokenError on anything else."""
    if not isinstance(text, str) or "=" in text:
        raise TokenError("not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("not base64url text") from None


def _uint(text: Any, what: str) -> int:
    if not isinstance(text, str) or not text:
        raise TokenError(f"key: '{what}' missing")
    return int.from_bytes(b64url_decode(text), "big")


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class Jwk:
    """A public signing key of a provider: RSA (n, e) or EC P-256 (x, y)."""

    kty: str  # RSA | EC
    kid: str = ""
    alg: str = ""  # the one algorithm the provider says it is for ("" = not said)
    n: int = 0
    e: int = 0
    x: int = 0
    y: int = 0

    @property
    def algorithm(self) -> str:
        """The JWS algorithm this key can check."""
        return "RS256" if self.kty == "RSA" else "ES256"


def parse_jwks(document: Any) -> list[Jwk]:
    """The usable keys of a JWKS document (`{"keys": [...]}`): RSA and EC P-256 signing keys;
    others (encryption keys, other curves) are skipped. TokenError when it is no JWKS."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TokenError("the provider's JWKS is not a JSON object with a 'keys' list")
    return [key for raw in document["keys"] if (key := _jwk(raw)) is not None]


def _jwk(raw: Any) -> Jwk | None:
    if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
        return None
    kid, alg = str(raw.get("kid", "")), str(raw.get("alg", ""))
    if raw.get("kty") == "RSA" and alg in ("", "RS256"):
        return Jwk("RSA", kid, alg, n=_uint(raw.get("n"), "n"), e=_uint(raw.get("e"), "e"))
    if raw.get("kty") == "EC" and raw.get("crv") == "P-256" and alg in ("", "ES256"):
        return Jwk("EC", kid, alg, x=_uint(raw.get("x"), "x"), y=_uint(raw.get("y"), "y"))
    return None


def select_key(keys: Iterable[Jwk], header: Mapping[str, Any]) -> Jwk | None:
    """The key the token's header names (by `kid`), or the only key of its algorithm when the
    header names none; None when no key fits (the caller may fetch the JWKS again)."""
    alg = header.get("alg")
    fitting = [k for k in keys if k.algorithm == alg]
    kid = header.get("kid")
    if kid is not None:
        return next((k for k in fitting if k.kid == kid), None)
    return fitting[0] if len(fitting) == 1 else None


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse_jwt(token: str) -> Jwt:
    """A compact JWS (`header.payload.signature`) with JSON header and claims; its signature
    is not checked here. TokenError when it is malformed or uses a refused algorithm."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"the ID token is missing or longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("the ID token is not a compact JWS (header.payload.signature)")
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "claims")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise TokenError(
            f"the ID token's algorithm {alg!r} is refused (accepted: {', '.join(ALGORITHMS)})"
        )
    if "crit" in header:
        raise TokenError("the ID token names critical header extensions ('crit'), unsupported")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    return Jwt(header, claims, signing_input, b64url_decode(parts[2]))


def _json_part(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(text))
    except (ValueError, UnicodeDecodeError):
        raise TokenError(f"the ID token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"the ID token's {what} is not a JSON object")
    return value


def verify_signature(jwt: Jwt, key: Jwk) -> None:
    """TokenError unless `key` made the token's signature with the token's algorithm."""
    alg = jwt.header.get("alg")
    if key.algorithm != alg or (key.alg and key.alg != alg):
        raise TokenError(f"key '{key.kid}' ({key.kty}) cannot check an {alg} signature")
    if alg == "RS256":
        good = rs256_verify(key.n, key.e, jwt.signing_input, jwt.signature)
    else:
        good = es256_verify(key.x, key.y, jwt.signing_input, jwt.signature)
    if not good:
        raise TokenError("the ID token's signature does not match the provider's key")


# ---------------------------------------------------------------- RS256

# DER of DigestInfo{sha256, NULL} before the 32 digest bytes (RFC 8017 §9.2, note 1)
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def rs256_verify(n: int, e: int, message: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5-VERIFY with SHA-256: the signature raised to `e` modulo `n` must be
    exactly the encoding EMSA-PKCS1-v1_5 gives the message's digest."""
    size = (n.bit_length() + 7) // 8
    if n.bit_length() < MIN_RSA_BITS or e < 3 or e % 2 == 0 or len(signature) != size:
        return False
    s = int.from_bytes(signature, "big")
    if s >= n:
        return False
    encoded = pow(s, e, n).to_bytes(size, "big")
    digest = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(digest) - 3) + b"\x00" + digest
    return encoded == expected


# ---------------------------------------------------------------- ES256 (NIST P-256)

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
Point = tuple[int, int] | None  # None: the point at infinity


def on_curve(x: int, y: int) -> bool:
    """Whether (x, y) is a point of P-256 (coordinates in the field, y² = x³ + ax + b)."""
    if not (0 <= x < _P and 0 <= y < _P):
        return False
    return (y * y - (x * x * x + _A * x + _B)) % _P == 0


def _add(p: Point, q: Point) -> Point:
    if p is None:
        return q
    if q is None:
        return p
    (x1, y1), (x2, y2) = p, q
    if x1 == x2:
        if (y1 + y2) % _P == 0:
            return None
        slope = (3 * x1 * x1 + _A) * pow(2 * y1, -1, _P) % _P
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, _P) % _P
    x3 = (slope * slope - x1 - x2) % _P
    return x3, (slope * (x1 - x3) - y1) % _P


def _mul_add(u1: int, u2: int, q: tuple[int, int]) -> Point:
    """u1·G + u2·Q, both multiplications in one pass of double-and-add (Shamir's trick)."""
    both = _add(_G, q)
    result: Point = None
    for bit in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        result = _add(result, result)
        pick = ((u1 >> bit) & 1, (u2 >> bit) & 1)
        if pick == (1, 1):
            result = _add(result, both)
        elif pick == (1, 0):
            result = _add(result, _G)
        elif pick == (0, 1):
            result = _add(result, q)
    return result


def es256_verify(x: int, y: int, message: bytes, signature: bytes) -> bool:
    """ECDSA verification over P-256 with SHA-256; `signature` is JOSE's 64 bytes r ‖ s."""
    if len(signature) != 64 or not on_curve(x, y):
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    z = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, _N)
    point = _mul_add(z * w % _N, r * w % _N, (x, y))
    return point is not None and point[0] % _N == r


# ---------------------------------------------------------------- claims


@dataclass(frozen=True)
class Expected:
    """What an ID token's claims must say."""

    issuer: str
    client_id: str
    nonce: str
    leeway: float = LEEWAY_SECONDS


def check_claims(claims: Mapping[str, Any], expected: Expected, now: float) -> None:
    """OpenID Connect Core §3.1.3.7: the issuer, the audience (and `azp` when there are several
    audiences or it is given), the times (exp, iat, nbf, with a leeway), the nonce and a
    subject. TokenError naming the first claim that fails."""
    if claims.get("iss") != expected.issuer:
        raise TokenError(f"the ID token's issuer {claims.get('iss')!r} is not {expected.issuer!r}")
    _check_audience(claims, expected.client_id)
    _check_times(claims, now, expected.leeway)
    if not isinstance(claims.get("nonce"), str) or claims["nonce"] != expected.nonce:
        raise TokenError("the ID token's nonce is not the one this sign-in sent")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenError("the ID token has no subject ('sub')")


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise TokenError(f"the ID token is not meant for client '{client_id}' (aud {aud!r})")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise TokenError(f"the ID token was issued to another party (azp {azp!r})")


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    exp, iat, nbf = (_time(claims, name) for name in ("exp", "iat", "nbf"))
    if exp is None or iat is None:
        raise TokenError("the ID token lacks its expiry ('exp') or issue time ('iat')")
    if now > exp + leeway:
        raise TokenError(f"the ID token expired {int(now - exp)} s ago")
    if iat > now + leeway:
        raise TokenError("the ID token was issued in the future (check the clocks)")
    if nbf is not None and nbf > now + leeway:
        raise TokenError("the ID token is not valid yet ('nbf'; check the clocks)")


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"the ID token's '{name}' is not a number of seconds")
    return float(value)
