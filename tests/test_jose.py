"""nagare.jose: the RS256 / ES256 checks against RFC 7515's known-answer vectors and against
keys made by the `cryptography` package (test-only), malformed and tampered tokens, refused
algorithms, and the ID token's claim checks."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from nagare.jose import (
    Expected,
    Jwk,
    TokenError,
    check_claims,
    es256_verify,
    on_curve,
    parse_jwks,
    parse_jwt,
    rs256_verify,
    select_key,
    verify_signature,
)

crypto = pytest.importorskip("cryptography", reason="the test-only cryptography package is missing")
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402

# RFC 7515 appendix A.2 (RS256) and A.3 (ES256): the JWS and the public keys of RFC 7517.
RFC_PAYLOAD = (
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
)
RFC_RS256 = (
    "eyJhbGciOiJSUzI1NiJ9." + RFC_PAYLOAD + ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9P"
    "Jbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB"
    "--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzD"
    "wusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywl"
    "VmtVrBp0igcN_IoypGlUPQGe77Rw"
)
RFC_RSA_KEY = {
    "kty": "RSA",
    "e": "AQAB",
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1"
    "Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSX"
    "ndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5I"
    "hlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
}
RFC_ES256 = (
    "eyJhbGciOiJFUzI1NiJ9." + RFC_PAYLOAD + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTj"
    "Dxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)
RFC_EC_KEY = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def uint(value: int, size: int) -> str:
    return b64(value.to_bytes(size, "big"))


# ---------------------------------------------------------------- keys made by cryptography


class RsaSigner:
    def __init__(self, kid: str = "r1", bits: int = 2048) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=bits)

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        size = (numbers.n.bit_length() + 7) // 8
        return {"kty": "RSA", "kid": self.kid, "n": uint(numbers.n, size), "e": uint(numbers.e, 3)}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        head = b64json(header or {"alg": "RS256", "kid": self.kid, "typ": "JWT"})
        signing_input = f"{head}.{b64json(claims)}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"


class EcSigner:
    def __init__(self, kid: str = "e1") -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "x": uint(numbers.x, 32),
            "y": uint(numbers.y, 32),
        }

    def raw_signature(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        head = b64json(header or {"alg": "ES256", "kid": self.kid})
        signing_input = f"{head}.{b64json(claims)}"
        return f"{signing_input}.{b64(self.raw_signature(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_signer() -> RsaSigner:
    return RsaSigner()


@pytest.fixture(scope="module")
def ec_signer() -> EcSigner:
    return EcSigner()


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": "https://id.example.com",
        "aud": "nagare",
        "sub": "u-1",
        "nonce": "n-1",
        "iat": int(NOW) - 5,
        "exp": int(NOW) + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


EXPECTED = Expected("https://id.example.com", "nagare", "n-1")


def verify(token: str, jwks: list[dict[str, Any]]) -> dict[str, Any]:
    jwt = parse_jwt(token)
    key = select_key(parse_jwks({"keys": jwks}), jwt.header)
    if key is None:
        raise TokenError("no key")
    verify_signature(jwt, key)
    return jwt.claims


# ---------------------------------------------------------------- known answers


def test_rfc7515_a2_rs256_vector_verifies() -> None:
    assert verify(RFC_RS256, [RFC_RSA_KEY])["iss"] == "joe"


def test_rfc7515_a3_es256_vector_verifies() -> None:
    assert verify(RFC_ES256, [RFC_EC_KEY])["exp"] == 1300819380


@pytest.mark.parametrize("token,key", [(RFC_RS256, RFC_RSA_KEY), (RFC_ES256, RFC_EC_KEY)])
def test_a_changed_payload_or_signature_fails(token: str, key: dict[str, str]) -> None:
    head, payload, signature = token.split(".")
    other_payload = b64json({"iss": "joe", "exp": 1300819380, "http://example.com/is_root": False})
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[10] ^= 1
    for bad in (f"{head}.{other_payload}.{signature}", f"{head}.{payload}.{b64(bytes(flipped))}"):
        with pytest.raises(TokenError, match="signature does not match"):
            verify(bad, [key])


# ---------------------------------------------------------------- against cryptography's keys


def test_rs256_tokens_of_generated_keys_verify(rsa_signer: RsaSigner) -> None:
    assert verify(rsa_signer.sign(claims()), [rsa_signer.jwk()])["sub"] == "u-1"


def test_es256_tokens_of_generated_keys_verify(ec_signer: EcSigner) -> None:
    for index in range(5):  # different random nonces (k) each time
        token = ec_signer.sign(claims(sub=f"u-{index}"))
        assert verify(token, [ec_signer.jwk()])["sub"] == f"u-{index}"


def test_another_providers_key_does_not_verify(rsa_signer: RsaSigner) -> None:
    other = RsaSigner("r1")
    with pytest.raises(TokenError, match="signature does not match"):
        verify(rsa_signer.sign(claims()), [other.jwk()])


def test_small_rsa_keys_are_refused() -> None:
    small = RsaSigner("small", 1024)
    with pytest.raises(TokenError, match="signature does not match"):
        verify(small.sign(claims(), {"alg": "RS256", "kid": "small"}), [small.jwk()])


# ---------------------------------------------------------------- Wycheproof-style ES256 cases


def test_es256_r_and_s_out_of_range_fail(ec_signer: EcSigner) -> None:
    message = b"message"
    jwk = parse_jwks({"keys": [ec_signer.jwk()]})[0]
    good = ec_signer.raw_signature(message)
    assert es256_verify(jwk.x, jwk.y, message, good)
    r, s = good[:32], good[32:]
    zero, order = bytes(32), P256_N.to_bytes(32, "big")
    s_plus_n = (int.from_bytes(s, "big") + P256_N) % 2**256
    for bad in (
        zero + s,
        r + zero,
        order + s,
        r + order,
        r + s_plus_n.to_bytes(32, "big"),
        good[:63],
        good + b"\0",
        b"\xff" * 64,
    ):
        assert not es256_verify(jwk.x, jwk.y, message, bad)


def test_es256_high_s_twin_also_verifies(ec_signer: EcSigner) -> None:
    """ECDSA (and JOSE) accept (r, n - s) as well: the RFC's own A.3 vector has a high s."""
    message = b"twin"
    jwk = parse_jwks({"keys": [ec_signer.jwk()]})[0]
    good = ec_signer.raw_signature(message)
    twin = good[:32] + (P256_N - int.from_bytes(good[32:], "big")).to_bytes(32, "big")
    assert es256_verify(jwk.x, jwk.y, message, twin)


def test_points_off_the_curve_are_refused(ec_signer: EcSigner) -> None:
    jwk = parse_jwks({"keys": [ec_signer.jwk()]})[0]
    assert on_curve(jwk.x, jwk.y)
    assert not on_curve(jwk.x, jwk.y + 1)
    assert not on_curve(0, 0)
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    assert not on_curve(jwk.x + p, jwk.y)  # coordinates outside the field
    signature = ec_signer.raw_signature(b"m")
    assert not es256_verify(jwk.x, jwk.y + 1, b"m", signature)
    assert not es256_verify(0, 0, b"m", signature)


def test_rsa_signature_not_below_the_modulus_fails() -> None:
    jwk = parse_jwks({"keys": [RFC_RSA_KEY]})[0]
    size = (jwk.n.bit_length() + 7) // 8
    assert not rs256_verify(jwk.n, jwk.e, b"m", jwk.n.to_bytes(size, "big"))
    assert not rs256_verify(jwk.n, jwk.e, b"m", b"\0" * (size - 1))
    assert not rs256_verify(jwk.n, 4, b"m", b"\1" * size)  # an even exponent


# ---------------------------------------------------------------- algorithms and keys


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "PS256", "ES384", None, ""])
def test_other_algorithms_are_refused(alg: str | None) -> None:
    head = b64json({"alg": alg} if alg is not None else {})
    with pytest.raises(TokenError, match=r"algorithm .* is refused"):
        parse_jwt(f"{head}.{b64json(claims())}.")


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic confusion: an HMAC 'signed' with the RSA key's public bytes."""
    token = f"{b64json({'alg': 'HS256'})}.{b64json(claims())}.{b64(b'x' * 32)}"
    with pytest.raises(TokenError, match="refused"):
        verify(token, [RFC_RSA_KEY])


def test_an_alg_the_key_does_not_match_is_refused(
    rsa_signer: RsaSigner, ec_signer: EcSigner
) -> None:
    # an ES256 header naming the RSA key's kid: no EC key of that id
    token = ec_signer.sign(claims(), {"alg": "ES256", "kid": rsa_signer.kid})
    with pytest.raises(TokenError, match="no key"):
        verify(token, [rsa_signer.jwk(), ec_signer.jwk()])
    # forced through: verify_signature refuses the mismatch itself
    jwt = parse_jwt(token)
    with pytest.raises(TokenError, match="cannot check an ES256"):
        verify_signature(jwt, parse_jwks({"keys": [rsa_signer.jwk()]})[0])
    # a key that says it is for another algorithm is not offered for RS256 at all
    declared = {**rsa_signer.jwk(), "alg": "RS512"}
    assert parse_jwks({"keys": [declared]}) == []


def test_crit_headers_are_refused(rsa_signer: RsaSigner) -> None:
    token = rsa_signer.sign(claims(), {"alg": "RS256", "kid": "r1", "crit": ["exp"]})
    with pytest.raises(TokenError, match="crit"):
        parse_jwt(token)


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "%%%.e30.", "e30.bm90IGpzb24.", "W10.e30.", "x" * 20000, "e30=.e30.e30"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        parse_jwt(token)


def test_jwks_skips_keys_it_cannot_use() -> None:
    keys = parse_jwks(
        {
            "keys": [
                {**RFC_RSA_KEY, "use": "enc"},
                {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
                {"kty": "oct", "k": "c2VjcmV0"},
                "not a key",
                {**RFC_EC_KEY, "kid": "ec"},
            ]
        }
    )
    assert [(k.kty, k.kid) for k in keys] == [("EC", "ec")]
    with pytest.raises(TokenError, match="'keys' list"):
        parse_jwks({"keys": "none"})
    with pytest.raises(TokenError, match="'n' missing"):
        parse_jwks({"keys": [{"kty": "RSA", "e": "AQAB"}]})


def test_key_selection_by_kid_and_alg() -> None:
    keys = [Jwk("RSA", "a", n=1, e=3), Jwk("RSA", "b", n=1, e=3), Jwk("EC", "c", x=1, y=1)]
    assert select_key(keys, {"alg": "RS256", "kid": "b"}) == keys[1]
    assert select_key(keys, {"alg": "RS256", "kid": "zz"}) is None  # unknown: fetch again
    assert select_key(keys, {"alg": "RS256"}) is None  # two candidates: ambiguous
    assert select_key(keys, {"alg": "ES256"}) == keys[2]  # the only one


# ---------------------------------------------------------------- claims


def test_good_claims_pass() -> None:
    check_claims(claims(), EXPECTED, NOW)
    check_claims(claims(aud=["nagare", "other"], azp="nagare"), EXPECTED, NOW)
    check_claims(claims(nbf=int(NOW) - 1), EXPECTED, NOW)
    check_claims(claims(exp=int(NOW) - 30), EXPECTED, NOW)  # within the leeway


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"aud": "someone-else"}, "not meant for client"),
        ({"aud": ["a", "b"]}, "not meant for client"),
        ({"aud": None}, "not meant for client"),
        ({"aud": ["nagare", "other"]}, "another party"),
        ({"aud": ["nagare", "other"], "azp": "other"}, "another party"),
        ({"azp": "other"}, "another party"),
        ({"exp": int(NOW) - 120}, "expired"),
        ({"exp": None}, "lacks its expiry"),
        ({"iat": None}, "lacks its expiry"),
        ({"exp": "tomorrow"}, "not a number"),
        ({"exp": True}, "not a number"),
        ({"iat": int(NOW) + 600}, "in the future"),
        ({"nbf": int(NOW) + 600}, "not valid yet"),
        ({"nonce": "n-2"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": ""}, "subject"),
        ({"sub": None}, "subject"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TokenError, match=message):
        check_claims(claims(**changes), EXPECTED, NOW)
