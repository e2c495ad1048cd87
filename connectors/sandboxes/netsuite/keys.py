"""The documented demo credentials of the NetSuite sandbox (never valid anywhere else).

An OAuth 2.0 client credentials (M2M) integration in NetSuite is a client ID plus a certificate:
the integrator keeps the private key, NetSuite keeps the public key under a certificate ID. The
sandbox knows the public key below; the private key is published here (and in
docs/sandboxes/netsuite.md) so the demo, the tests and the benchmark can sign assertions.
Generated once with `cryptography` (RSA 2048); signed with PS256 as NetSuite recommends.
"""

from __future__ import annotations

DEMO_ACCOUNT_ID = "1234567_SB1"
DEMO_CLIENT_ID = "sandbox-client"
DEMO_CERTIFICATE_ID = "sandbox-certificate"

DEMO_PRIVATE_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC+/LN3J/LSgmO+
ZpXHK2IzGNPddVEZDggT2eaKKSCjaBzp8CPEZR/rPqg3eAK1zOuYRYF6UYe+GUQ0
VwBeMiugH/e795nAKPdGi2RMg9EhqsALNqWnr70rxL+EG/ZOXUV2+Q5sZ5HKO65I
PWaEMRaum4Hda67TxJaKsl0mc8cCRcGCaXH0wCADr05ZMFGFB+FbKJSQWWBWCbkX
Q1YSosu3Kkx48RqHTe3x6I9TqRAop/6c1k4O8Cyk5PO8IBDFySuED0qRSAFWkEDk
YP0zwUGwUfNOKx0VO4OVL2LNfEBWN/krx9p28Einc/RzmeEG77V4gkgI15EWi7BE
lDtfZgxhAgMBAAECggEACNuwTeWExgNq3D470i9j8ETFhtmrIkNcAo0Hu/6+VyCR
aWmhmblVqqk5pMukgd7Nn+lmtk/+a3Br5mrmnHfX6CcIwXzGx8/emt9aOTuf699/
OsXqbFr3+4YLmqAFY4sV7re3KzX+ir0L5KkxuQ3hzxrCrOISthsXHxBjcPt2Y9eD
PBMS3VxaXhxdL4jzBTS/KF7utP2ju/ze+R883SmM96gPhaTU9o2vtZT1i/dookRH
3oR25BopXZsS9QsvKZfFu6gyR3UljgSwPbdlPxvDpvA1lIm6o6/3/34v8kPUZAA4
V4oSSG/VCAFCE9lO0UUpsgMEjWoOQYVV0TMSzyR0lQKBgQDiZ/L6wRuiUp9rxM5x
z/Itz6zlIju5wFmeyRdw6GyXveoC92hkJVpWH3r/2FvoSd7BDKr4kOaleNlK8s9K
Bwx6WsAJYWzpUxXJxSWHi4m01w3HEKBtW+/mqMKJU4Spgrv+9sPy0xnLKP6yv3IE
zrIT8OvzupQDsV79Ubk12p26HwKBgQDX844qIdNlbOUMY6LCsdHfsbYZYpOcD4C/
GI/WTvsZD+A0lpZVPqo3K9dUZMpXCFd56NpHt3+tUKwUIOuVPhxk9mQBkvJWYOK8
UQloefOMgkA6Gg8mL5naAAhk/ZC6zV54ubX128AFL4w94HNu908Ybugr5mXUWArt
LwaXLDBpfwKBgQCb/KRy0VNZvfUqifj2fx/LIldrsu9VZkoY1VF6MBiJX4Z4Lr9U
qEuaJKxY01dXLnXzqeetxB+1CBMlyS66QSr+rcG7dM1V4DGVx2e5AJGK79QFP9ZY
IkyiLcmCVfGD3Jfr7VZJ2dnemEsLGk3TNBmLFaVrUjQiazUX8RNbIFklXwKBgFRO
J/T4yZ9x+KVyjEr3wphSt2WHn1qwjrGLtDOVF9/726qME1pqIWdyfRjcVEXP4t6b
8gNHdtfBg7xD8dSMr+cWbYpTxLnGDx43gLXBzjvPaaWFIN7mfGin1J8ggoz6uePl
lEzMIlWj71sEsevjLoS6X3cr9hsE2BcqYadIwAmfAoGAAnFqh40PaiE82xL3HblY
sILPZC9SwazpOVt7QUM5ARQ/w8v/bi2z3O3C4t5h5tSCs8gxom8qTvAnB6qZBPPU
mI2JaweZDtXDgbmaDXheAVZRAGmNllF+N9qmpqaQQW8F3ehoHloi19wXLd4l9wp9
OnHdKpIYvgYKe5su4f8LlIo=
-----END PRIVATE KEY-----
"""

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
