#!/usr/bin/env python3
"""A Distribution token server for tests (the realm of `auth: token` registries).

GET  /token?service=S&scope=repository:NAME:pull,push  with HTTP basic auth
POST /token  (form: grant_type=password|refresh_token, as Docker sends for an
             identitytoken)
answer {"token", "access_token", "expires_in", "issued_at"} holding a JWT signed
RS256 with `openssl dgst -sha256 -sign KEY`, the signing certificate in the
header's x5c, so the registry checks it against its rootcertbundle.

Only USER with PASSWORD (or the refresh token REFRESH) gets the actions it
asks for; anything else is answered 401, as a real token server does.
Every request is appended to DIR/requests.log (method, path, grant type,
whether it carried credentials; never a secret), so tests can see the flow.

usage: token_server.py PORT DIR USER PASSWORD REFRESH ISSUER
DIR holds key.pem and cert.pem.
"""

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT, DIR, USER, PASSWORD, REFRESH, ISSUER = sys.argv[1:7]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der_b64():
    der = subprocess.run(
        ["openssl", "x509", "-in", os.path.join(DIR, "cert.pem"), "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return base64.b64encode(der).decode()


X5C = cert_der_b64()


def sign(message):
    # RS256 is RSASSA-PKCS1-v1_5 over SHA-256: exactly what `openssl dgst -sign` makes.
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", os.path.join(DIR, "key.pem")],
        input=message,
        check=True,
        capture_output=True,
    ).stdout


def jwt(service, access):
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    claims = {
        "iss": ISSUER,
        "sub": USER,
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    return signing_input + "." + b64url(sign(signing_input.encode()))


def access_for(scopes):
    """Grants every scope asked for (the user is the right one by now)."""
    access = []
    for scope in scopes:
        for one in scope.split(" "):
            parts = one.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name = ":".join(parts[1:-1])
            actions = [a for a in parts[-1].split(",") if a in ("pull", "push")]
            access.append({"type": "repository", "name": name, "actions": actions})
    return access


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def record(self, line):
        with open(os.path.join(DIR, "requests.log"), "a") as f:
            f.write(line + "\n")

    def basic_ok(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == USER and password == PASSWORD

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def grant(self, ok, service, scopes):
        if not ok:
            self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        token = jwt(service, access_for(scopes))
        self.answer(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": 300,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ok = self.basic_ok()
        self.record(f"GET {url.path} basic={ok is not None} ok={bool(ok)}")
        self.grant(bool(ok), query.get("service", [""])[0], query.get("scope", []))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        grant_type = form.get("grant_type", [""])[0]
        if grant_type == "refresh_token":
            ok = form.get("refresh_token", [""])[0] == REFRESH
        elif grant_type == "password":
            ok = form.get("username", [""])[0] == USER and form.get("password", [""])[0] == PASSWORD
        else:
            ok = False
        self.record(f"POST {urlsplit(self.path).path} grant_type={grant_type} ok={ok}")
        self.grant(ok, form.get("service", [""])[0], form.get("scope", []))


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
