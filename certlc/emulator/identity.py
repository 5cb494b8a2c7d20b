"""The managed-identity token endpoint, App Service protocol, and the tokens it issues.

azure-identity's ``ManagedIdentityCredential`` (inside ``DefaultAzureCredential``) uses the App
Service protocol when ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set; msal then sends
``GET <IDENTITY_ENDPOINT>?api-version=2019-08-01&resource=<resource>[&client_id=<id>]`` with the
header ``X-IDENTITY-HEADER: <IDENTITY_HEADER>`` and reads ``access_token`` and ``expires_on``
(``msal/managed_identity.py`` ``_obtain_token_on_app_service``). Errors are answered with
App Service's ``{"statusCode", "message"}``, which msal turns into a failed credential.

Tokens are opaque to clients and verifiable only by the emulator: Fernet-encrypted JSON with the
principal, client id, audience and expiry, keyed by a subkey of the emulator's master key.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

__all__ = [
    "API_VERSION",
    "IDENTITY_PATH",
    "TOKEN_LIFETIME",
    "VAULT_RESOURCE",
    "Principal",
    "TokenIssuer",
    "TokenRejected",
    "identity_app",
]

API_VERSION = "2019-08-01"
IDENTITY_PATH = "/msi/token"
VAULT_RESOURCE = "https://vault.azure.net"
TOKEN_LIFETIME = 3600  # seconds; under 2 h so msal does not schedule a background refresh


@dataclass(frozen=True)
class Principal:
    name: str
    client_id: str


class TokenRejected(Exception):
    """The bearer token is not one this emulator issued for this audience, or it has expired."""


class TokenIssuer:
    """Issues and verifies access tokens for the configured principals (name -> client id)."""

    def __init__(self, fernet: Fernet, principals: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        if not principals:
            raise ValueError("the emulator needs at least one principal")
        self._fernet = fernet
        self._principals = dict(principals)
        self._clock = clock

    def principal_for(self, client_id: str | None) -> Principal | None:
        """The principal a request names by client id; no client id = the first principal."""
        if not client_id:
            name, cid = next(iter(self._principals.items()))
            return Principal(name, cid)
        for name, cid in self._principals.items():
            if cid.lower() == client_id.lower():
                return Principal(name, cid)
        return None

    def issue(self, principal: Principal, resource: str, lifetime: int = TOKEN_LIFETIME) -> tuple[str, int]:
        """A token for ``principal`` and audience ``resource``, and its expiry (Unix seconds)."""
        now = int(self._clock())
        expires_on = now + lifetime
        claims = {"sub": principal.name, "cid": principal.client_id, "aud": resource, "iat": now, "exp": expires_on}
        return self._fernet.encrypt(json.dumps(claims).encode()).decode("ascii"), expires_on

    def verify(self, token: str, resource: str) -> Principal:
        try:
            claims = json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, UnicodeError, ValueError):
            raise TokenRejected("AKV10013: Token validation failed: the token was not issued by this emulator.") from None
        if _audience(claims.get("aud", "")) != _audience(resource):
            raise TokenRejected(f"AKV10022: Invalid audience. Expected {resource}, found: {claims.get('aud')}.")
        if int(claims.get("exp", 0)) <= self._clock():
            raise TokenRejected("AKV10032: Token expired.")
        name, client_id = claims.get("sub"), claims.get("cid")
        if self._principals.get(name) != client_id:
            raise TokenRejected(f"AKV10013: Token validation failed: principal {name!r} is not configured.")
        return Principal(name, client_id)


def _audience(resource: str) -> str:
    return resource.rstrip("/").lower()


def identity_app(issuer: TokenIssuer, identity_header: str, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app answering ``GET /msi/token`` as App Service's identity endpoint does, plus
    ``extra_routes`` (the emulator's admin endpoints, which check the same header)."""

    async def token(request: Request) -> JSONResponse:
        supplied = request.headers.get("x-identity-header", "")
        if not hmac.compare_digest(supplied.encode(), identity_header.encode()):
            return _error(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        params = request.query_params
        if params.get("api-version") != API_VERSION:
            return _error(400, f"Unsupported api-version {params.get('api-version')!r}; use {API_VERSION}.")
        resource = params.get("resource")
        if not resource:
            return _error(400, "The resource query parameter is required.")
        if any(params.get(p) for p in ("mi_res_id", "object_id", "principal_id")):
            return _error(400, "The emulator selects user-assigned identities by client_id only.")
        principal = issuer.principal_for(params.get("client_id"))
        if principal is None:
            return _error(400, f"No managed identity with client id {params.get('client_id')} is assigned.")
        access_token, expires_on = issuer.issue(principal, resource)
        return JSONResponse(
            {
                "access_token": access_token,
                "expires_on": str(expires_on),  # App Service sends a string; msal accepts both
                "resource": resource,
                "token_type": "Bearer",
                "client_id": principal.client_id,
            }
        )

    return Starlette(routes=[Route(IDENTITY_PATH, token, methods=["GET"]), *extra_routes])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)
