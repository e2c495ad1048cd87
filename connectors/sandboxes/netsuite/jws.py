"""Compact JWS (RFC 7515) signing and verification with `cryptography`, for the client assertion
of NetSuite's OAuth 2.0 client credentials (M2M) grant. Only the algorithms NetSuite accepts for
certificates: PS256/PS384/PS512 and RS256 for RSA keys, ES256/ES384/ES512 for EC keys.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_SIZES = {"256": 32, "384": 48, "512": 66}
ALGORITHMS = ("PS256", "PS384", "PS512", "RS256", "ES256", "ES384", "ES512")


class JWSError(ValueError):
    """The assertion is not a well-formed, correctly signed JWS."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JWSError(f"not base64url: {exc}") from None


def sign(claims: dict[str, Any], *, private_key_pem: str, kid: str, alg: str = "PS256") -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    digest = _HASHES[alg[2:]]()
    if alg.startswith("PS") and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    elif alg.startswith("RS") and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), digest)
    elif alg.startswith("ES") and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = _EC_SIZES[alg[2:]]
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise JWSError(f"algorithm {alg} does not fit a {key.__class__.__name__}")
    return f"{signing_input.decode()}.{b64url(signature)}"


def unverified_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise JWSError("a JWS has three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
    except ValueError as exc:
        raise JWSError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise JWSError("the header is not a JSON object")
    return header


def verify(token: str, *, public_key_pem: str) -> dict[str, Any]:
    """The claims of `token` once its signature checks out against the public key."""
    header = unverified_header(token)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise JWSError(f"unsupported algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")
    head, payload, signature_text = token.split(".")
    signing_input = f"{head}.{payload}".encode()
    signature = b64url_decode(signature_text)
    key = serialization.load_pem_public_key(public_key_pem.encode())
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PSS(padding.MGF1(digest), padding.PSS.AUTO), digest)
        elif alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        elif alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            size = _EC_SIZES[alg[2:]]
            if len(signature) != 2 * size:
                raise InvalidSignature
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
            key.verify(der, signing_input, ec.ECDSA(digest))
        else:
            raise JWSError(f"algorithm {alg} does not fit the certificate's key")
    except InvalidSignature:
        raise JWSError("the signature does not match the certificate") from None
    try:
        claims = json.loads(b64url_decode(payload))
    except ValueError as exc:
        raise JWSError(f"the payload is not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise JWSError("the payload is not a JSON object")
    return claims
