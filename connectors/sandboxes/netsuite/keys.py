"""The documented demo credentials of the NetSuite sandbox (never valid anywhere else).

An OAuth 2.0 client credentials (M2M) integration in NetSuite is a client ID plus a certificate:
the integrator keeps the private key, NetSuite keeps the public key under a certificate ID. The
sandbox knows the public key below; the private key is published in demo-private-key.pem (and in
docs/sandboxes/netsuite.md) so the demo, the tests and the benchmark can sign assertions.
Generated once with `cryptography` (RSA 2048); signed with PS256 as NetSuite recommends.
"""

from __future__ import annotations

from pathlib import Path

DEMO_ACCOUNT_ID = "1234567_SB1"
DEMO_CLIENT_ID = "sandbox-client"
DEMO_CERTIFICATE_ID = "sandbox-certificate"

DEMO_PRIVATE_KEY_PEM = (Path(__file__).parent / "demo-private-key.pem").read_text()

DEMO_PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvvyzdyfy0oJjvmaVxyti
MxjT3XVRGQ4IE9nmiikgo2gc6fAjxGUf6z6oN3gCtczrmEWBelGHvhlENFcAXjIr
oB/3u/eZwCj3RotkTIPRIarACzalp6+9K8S/hBv2Tl1FdvkObGeRyjuuSD1mhDEW
rpuB3Wuu08SWirJdJnPHAkXBgmlx9MAgA69OWTBRhQfhWyiUkFlgVgm5F0NWEqLL
typMePEah03t8eiPU6kQKKf+nNZODvAspOTzvCAQxckrhA9KkUgBVpBA5GD9M8FB
sFHzTisdFTuDlS9izXxAVjf5K8fadvBIp3P0c5nhBu+1eIJICNeRFouwRJQ7X2YM
YQIDAQAB
-----END PUBLIC KEY-----
"""
