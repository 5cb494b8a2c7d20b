"""The HTTP face of one emulated vault: challenge authentication, audit, routes, paging.

What the official SDK clients need from the server (azure-reference.md §3, §5, §12):

- every request without a valid bearer token is answered 401 with a ``WWW-Authenticate``
  challenge *before* the body is read (the SDK's first request is bodiless);
- ids use the exact ``host:port`` the client addressed (``Host`` header);
- ``GET /certificates/{name}/`` and ``/secrets/{name}/`` (trailing slash) mean "latest";
- list pages carry an absolute ``nextLink`` on the same host; ``maxresults`` is 1-25;
- any ``api-version`` is accepted and unknown JSON fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certlc.emulator.audit import AuditLog
from certlc.emulator.errors import KvError, bad_parameter
from certlc.emulator.identity import VAULT_RESOURCE, Principal, TokenIssuer, TokenRejected
from certlc.emulator.vault import Listing, Vault

__all__ = ["CHALLENGE", "TENANT_ID", "vault_app"]

# The emulator's (fictitious) directory; the challenge hands it to the credential as tenant_id,
# which managed identity ignores.
TENANT_ID = "00000000-0000-0000-0000-0000000ce1c0"
# resource="https://vault.azure.net" like the real service: tokens then carry Key Vault's real
# audience. Clients on https://localhost:PORT must pass verify_challenge_resource=False (§3.4).
CHALLENGE = f'Bearer authorization="https://login.windows.net/{TENANT_ID}", resource="{VAULT_RESOURCE}"'
NO_BEARER_MESSAGE = "AKV10000: Request is missing a Bearer or PoP token."
PAGE_MAX = 25
RETRY_AFTER = "10"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

Handler = Callable[[Request], Awaitable[Response]]


def vault_app(vault: Vault, issuer: TokenIssuer, audit: AuditLog) -> ASGIApp:
    """The ASGI app of one vault: challenge auth and audit around the Key Vault routes."""
    routes = [
        Route("/certificates", _list_certificates(vault), methods=["GET"]),
        Route("/certificates/{name}/create", _create(vault), methods=["POST"]),
        Route("/certificates/{name}/import", _import(vault), methods=["POST"]),
        Route("/certificates/{name}/versions", _list_versions(vault), methods=["GET"]),
        Route("/certificates/{name}/policy", _policy(vault), methods=["GET", "PATCH"]),
        Route("/certificates/{name}/pending/merge", _merge(vault), methods=["POST"]),
        Route("/certificates/{name}/pending", _pending(vault), methods=["GET", "PATCH", "DELETE"]),
        Route("/certificates/{name}/", _certificate(vault), methods=["GET", "PATCH"]),
        Route("/certificates/{name}", _certificate(vault), methods=["GET", "PATCH", "DELETE"]),
        Route("/certificates/{name}/{version}", _certificate(vault), methods=["GET", "PATCH"]),
        Route("/deletedcertificates", _list_deleted(vault), methods=["GET"]),
        Route("/deletedcertificates/{name}/recover", _recover(vault), methods=["POST"]),
        Route("/deletedcertificates/{name}", _deleted(vault), methods=["GET", "DELETE"]),
        Route("/secrets", _list_secrets(vault), methods=["GET"]),
        Route("/secrets/{name}/versions", _list_secret_versions(vault), methods=["GET"]),
        Route("/secrets/{name}/", _secret(vault), methods=["GET"]),
        Route("/secrets/{name}", _secret(vault), methods=["GET"]),
        Route("/secrets/{name}/{version}", _secret(vault), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: _unrouted, 405: _unrouted, Exception: _internal_error},
    )
    app.router.redirect_slashes = False  # "/certificates/x/" is a route of its own, never a redirect
    return ChallengeAuth(app, vault_name=vault.name, issuer=issuer, audit=audit)


class ChallengeAuth:
    """Pure ASGI middleware: 401 + challenge without a valid token, one audit line per request.

    Pure ASGI (not BaseHTTPMiddleware) so a refused request's body is never read.
    """

    def __init__(self, app: ASGIApp, *, vault_name: str, issuer: TokenIssuer, audit: AuditLog) -> None:
        self.app = app
        self.vault_name = vault_name
        self.issuer = issuer
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal, rejection = self._authenticate(Headers(scope=scope))
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if principal is None:
                error = KvError(401, "Unauthorized", rejection)
                response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": CHALLENGE})
                await response(scope, receive, send_and_note)
            else:
                scope.setdefault("state", {})["principal"] = principal  # for role checks later
                await self.app(scope, receive, send_and_note)
        finally:
            self.audit.record(
                vault=self.vault_name,
                principal=principal.name if principal else None,
                client_id=principal.client_id if principal else None,
                method=scope["method"],
                path=scope["path"],  # the path only: no query string, no body, no token
                status=status,
            )

    def _authenticate(self, headers: Headers) -> tuple[Principal | None, str]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, NO_BEARER_MESSAGE
        try:
            return self.issuer.verify(token.strip(), VAULT_RESOURCE), ""
        except TokenRejected as exc:
            return None, str(exc)


# Plumbing -----------------------------------------------------------------------------------------
def _kv_endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Handler:
    """Wrap a route: require api-version, render KvError in Key Vault's envelope."""

    async def endpoint(request: Request) -> Response:
        try:
            if not request.query_params.get("api-version"):
                raise bad_parameter("The request URI must contain the api-version query parameter.")
            return await fn(request)
        except KvError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    return endpoint


def _base(request: Request) -> str:
    """``https://host:port`` exactly as the client addressed this vault."""
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        raise bad_parameter("The Host header is missing or malformed.")
    return f"https://{host}"


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_parameter("The request body is not valid JSON.") from None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _page(request: Request, listing: Listing) -> dict[str, Any]:
    """One page of ``listing`` after the ``$skiptoken`` marker, with an absolute nextLink."""
    params = request.query_params
    size = PAGE_MAX
    if params.get("maxresults"):
        try:
            size = int(params["maxresults"])
        except ValueError:
            size = 0
        if not 1 <= size <= PAGE_MAX:
            raise bad_parameter(f"Invalid maxresults {params['maxresults']!r}: use a number from 1 to {PAGE_MAX}.")
    marker = _decode_marker(params.get("$skiptoken"))
    # The marker is "everything after this key", so pages must walk the keys in order.
    ordered = sorted(listing, key=lambda entry: entry[0])
    remaining = [(key, item) for key, item in ordered if marker is None or key > marker]
    page = remaining[:size]
    next_link = None
    if len(remaining) > size:
        query = {"api-version": params["api-version"], "$skiptoken": _encode_marker(page[-1][0]), "maxresults": size}
        if "includePending" in params:
            query["includePending"] = params["includePending"]
        next_link = f"{_base(request)}{request.url.path}?{urlencode(query, safe='$')}"
    return {"value": [item for _, item in page], "nextLink": next_link}


def _encode_marker(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"NextMarker": key}).encode()).rstrip(b"=").decode("ascii")


def _decode_marker(token: str | None) -> str | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(data["NextMarker"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad_parameter("The $skiptoken is not one this vault issued.") from None


async def _unrouted(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    code = "MethodNotAllowed" if status == 405 else "NotFound"
    error = KvError(status, code, f"The Key Vault emulator does not implement {request.method} {request.url.path}.")
    return JSONResponse(error.body(), status_code=status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    error = KvError(500, "InternalServerError", f"The emulator failed: {type(exc).__name__}.")
    return JSONResponse(error.body(), status_code=500)


# Routes --------------------------------------------------------------------------------------------
def _list_certificates(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        include = request.query_params.get("includePending", "").lower() == "true"
        listing = await run_in_threadpool(vault.list_certificates, _base(request), include)
        return _json(_page(request, listing))

    return _kv_endpoint(handle)


def _list_versions(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        listing = await run_in_threadpool(vault.list_versions, _base(request), request.path_params["name"])
        return _json(_page(request, listing))

    return _kv_endpoint(handle)


def _create(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        body = await _json_body(request)
        operation = await run_in_threadpool(vault.create, _base(request), request.path_params["name"], body)
        location = (
            f"{operation['id']}?{urlencode({'api-version': request.query_params['api-version']})}"
            f"&request_id={operation['request_id']}"
        )
        headers = {"Location": location, "Retry-After": RETRY_AFTER}
        return _json(operation, 202, headers)

    return _kv_endpoint(handle)


def _import(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        body = await _json_body(request)
        bundle = await run_in_threadpool(vault.import_certificate, _base(request), request.path_params["name"], body)
        return _json(bundle)

    return _kv_endpoint(handle)


def _merge(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        body = await _json_body(request)
        bundle = await run_in_threadpool(vault.merge, _base(request), request.path_params["name"], body)
        unversioned = bundle["id"].rsplit("/", 1)[0]
        location = f"{unversioned}?{urlencode({'api-version': request.query_params['api-version']})}"
        return _json(bundle, 201, {"Location": location})

    return _kv_endpoint(handle)


def _pending(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        base, name = _base(request), request.path_params["name"]
        if request.method == "GET":
            request_id = request.query_params.get("request_id")
            operation = await run_in_threadpool(vault.get_pending, base, name, request_id)
            in_progress = operation["status"].lower() == "inprogress"
            return _json(operation, headers={"Retry-After": RETRY_AFTER} if in_progress else None)
        if request.method == "PATCH":
            body = await _json_body(request)
            return _json(await run_in_threadpool(vault.cancel_pending, base, name, body))
        return _json(await run_in_threadpool(vault.delete_pending, base, name))

    return _kv_endpoint(handle)


def _policy(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        base, name = _base(request), request.path_params["name"]
        if request.method == "GET":
            return _json(await run_in_threadpool(vault.get_policy, base, name))
        body = await _json_body(request)
        return _json(await run_in_threadpool(vault.update_policy, base, name, body))

    return _kv_endpoint(handle)


def _certificate(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        base, name = _base(request), request.path_params["name"]
        version = request.path_params.get("version") or None
        if request.method == "GET":
            return _json(await run_in_threadpool(vault.get_certificate, base, name, version))
        if request.method == "PATCH":
            body = await _json_body(request)
            return _json(await run_in_threadpool(vault.update_certificate, base, name, version, body))
        return _json(await run_in_threadpool(vault.delete_certificate, base, name))

    return _kv_endpoint(handle)


def _list_deleted(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        return _json(_page(request, await run_in_threadpool(vault.list_deleted, _base(request))))

    return _kv_endpoint(handle)


def _deleted(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "GET":
            return _json(await run_in_threadpool(vault.get_deleted, _base(request), name))
        await run_in_threadpool(vault.purge_deleted, name)
        return Response(status_code=204)

    return _kv_endpoint(handle)


def _recover(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        name = request.path_params["name"]
        return _json(await run_in_threadpool(vault.recover_deleted, _base(request), name))

    return _kv_endpoint(handle)


def _list_secrets(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        return _json(_page(request, await run_in_threadpool(vault.list_secrets, _base(request))))

    return _kv_endpoint(handle)


def _list_secret_versions(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        listing = await run_in_threadpool(vault.list_secret_versions, _base(request), request.path_params["name"])
        return _json(_page(request, listing))

    return _kv_endpoint(handle)


def _secret(vault: Vault) -> Handler:
    async def handle(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version") or None
        out_type = request.query_params.get("outContentType") or None
        return _json(await run_in_threadpool(vault.get_secret, _base(request), name, version, out_type))

    return _kv_endpoint(handle)
