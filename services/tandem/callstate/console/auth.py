"""Who may use the console: the API's bearer tokens, as a login cookie for browsers.

With no token configured (an API on loopback) everyone may do everything, as with the API.
Otherwise the login form takes the write token (`TANDEM_API_TOKEN`) or the read token
(`TANDEM_API_READ_TOKEN`), and the cookie it sets holds the role and an HMAC of the role
keyed by that token, never the token itself: changing a token logs its users out. A bearer
header is taken as well, for scripts.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from tandem.http import same_token

COOKIE = "tandem_console"
COOKIE_MAX_AGE_S = 12 * 3600


class Role(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2


@dataclass(frozen=True)
class Tokens:
    write: str | None
    read: str | None

    @property
    def open(self) -> bool:
        return self.write is None

    def role_of_token(self, given: str) -> Role:
        if self.write is not None and same_token(given, self.write):
            return Role.WRITE
        if self.read is not None and same_token(given, self.read):
            return Role.READ
        return Role.NONE

    def cookie(self, role: Role) -> str:
        token = self.write if role is Role.WRITE else self.read
        assert token is not None
        return f"{role.name.lower()}.{_seal(token, role)}"

    def role_of_cookie(self, value: str) -> Role:
        name, _, seal = value.partition(".")
        for role, token in ((Role.WRITE, self.write), (Role.READ, self.read)):
            known = token is not None and name == role.name.lower()
            if known and token is not None and hmac.compare_digest(seal, _seal(token, role)):
                return role
        return Role.NONE

    def role(self, request: Request) -> Role:
        if self.open:
            return Role.WRITE
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return self.role_of_token(given)
        return self.role_of_cookie(request.cookies.get(COOKIE, ""))


def _seal(token: str, role: Role) -> str:
    return hmac.new(
        token.encode(), f"tandem-console:{role.name}".encode(), hashlib.sha256
    ).hexdigest()


class LoginRequired(Exception):
    """No valid cookie: a page answers with the login form instead."""


def need(request: Request, tokens: Tokens, wanted: Role) -> Role:
    role = tokens.role(request)
    if role is Role.NONE:
        raise LoginRequired
    if role < wanted:
        raise HTTPException(403, "this needs the write token: log in with it")
    return role
