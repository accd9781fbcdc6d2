"""Bearer tokens: only a token of the issuer, for this audience, unexpired, with a valid signature passes.

Each bad token is bad in exactly one way: the control decodes it with that one check switched off and it
passes, so the 401 comes from that check and not from something else wrong with the test token.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from umc_infra.errors import Unauthenticated
from umc_infra.service.auth import IssuerKeys, JwtVerifier

from .conftest import AUDIENCE, ISSUER, make_token, signing_key, verifier

OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = signing_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip


def test_a_valid_token_names_the_caller():
    caller = verifier().verify(make_token("alice"))
    assert (caller.subject, caller.username, caller.groups) == ("entity-alice", "alice", ("cardiology-it",))


def _none_token() -> str:
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": 2**31}, None, algorithm="none")


def _hmac_with_public_key() -> str:
    # The algorithm-confusion attack: HS256 keyed with the issuer's public key. PyJWT refuses a PEM as an HMAC
    # key, so sign by hand.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": 2**31}).encode())
    signature = hmac.new(PUBLIC_PEM, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


BAD = {
    "expired": (lambda: make_token(exp=1_000_000, iat=999_000), {"verify_exp": False}),
    "wrong audience": (lambda: make_token(aud="another-service"), {"verify_aud": False}),
    "wrong issuer": (lambda: make_token(iss="http://127.0.0.1:9/other"), {"verify_iss": False}),
    "bad signature": (lambda: make_token(key=OTHER_KEY), {"verify_signature": False}),
    "no subject": (lambda: make_token(sub=None), None),
    "no expiry": (lambda: make_token(exp=None), None),
    "none algorithm": (_none_token, None),
    "hmac with the public key": (_hmac_with_public_key, None),
    "not a jwt": (lambda: "not-a-token", None),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_token_is_refused(name):
    token = BAD[name][0]()
    with pytest.raises(Unauthenticated) as raised:
        verifier().verify(token)
    assert token not in str(raised.value)


@pytest.mark.parametrize("name", [n for n, (_, off) in BAD.items() if off])
def test_control_each_bad_token_passes_with_its_one_check_off(name):
    make, off = BAD[name]
    key = signing_key().public_key()
    claims = jwt.decode(make(), key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER,
                        options={"verify_signature": True, **off})  # fmt: skip
    assert claims["sub"]


def test_groups_must_be_names():
    with pytest.raises(Unauthenticated, match="groups"):
        verifier().verify(make_token(groups={"a": 1}))


class _Issuer(BaseHTTPRequestHandler):
    jwks: dict = {}
    hits: list = []

    def do_GET(self):
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.hits.append(self.path)
        documents = {"/oidc/.well-known/openid-configuration": {"issuer": f"{base}/oidc",
                                                                "jwks_uri": f"{base}/oidc/.well-known/keys"},
                     "/oidc/.well-known/keys": self.jwks}  # fmt: skip
        if self.path not in documents:
            self.send_error(404)
            return
        body = json.dumps(documents[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_issuers_keys_are_discovered_and_cached():
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key().public_key()))
    _Issuer.jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
    _Issuer.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Issuer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_address[1]}/oidc"
        real = JwtVerifier(issuer=issuer, audience=AUDIENCE, keys=IssuerKeys(issuer))
        for _ in range(3):
            assert real.verify(make_token("bob", iss=issuer)).username == "bob"
        assert _Issuer.hits == ["/oidc/.well-known/openid-configuration", "/oidc/.well-known/keys"]
        with pytest.raises(Unauthenticated):
            real.verify(make_token("bob", iss=issuer, key=OTHER_KEY))
        down = JwtVerifier(issuer=f"{issuer}/nothing", audience=AUDIENCE, keys=IssuerKeys(f"{issuer}/nothing"))
        with pytest.raises(Unauthenticated, match="keys cannot be read"):
            down.verify(make_token("bob"))
    finally:
        server.shutdown()
