"""The emulator's admin endpoints, served on the identity port (plain http, loopback only).

Every request must carry the identity endpoint's secret in ``X-IDENTITY-HEADER`` (compared in
constant time; 401 otherwise): whoever can read ``endpoints.json`` may already get tokens.

* ``GET /admin/clock`` → ``{"offset_seconds", "now"}``
* ``PUT /admin/clock`` ``{"offset": "25d" | seconds}`` → shifts the clock, then scans for expiry events
* ``GET /admin/events`` → ``{"enabled", "clock_offset_seconds", "fired", "subscriptions": [...]}``
* ``PUT /admin/events`` ``{"enabled": false | true}`` → pauses / resumes publishing and delivery
* ``POST /admin/events/scan`` → ``{"published": n}``
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from certlc.emulator.clock import EmulatorClock, parse_offset
from certlc.emulator.publisher import EventPublisher
from certlc.times import iso_utc

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX = "/admin"
MAX_BODY = 4096

Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    pass


def admin_routes(clock: EmulatorClock, publisher: EventPublisher, identity_header: str) -> list[Route]:
    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            supplied = request.headers.get("x-identity-header", "")
            if not hmac.compare_digest(supplied.encode(), identity_header.encode()):
                return _error(401, "The X-IDENTITY-HEADER header is missing or wrong.")
            try:
                return await handler(request)
            except _BadRequest as exc:
                return _error(400, str(exc))

        return endpoint

    def clock_state() -> dict[str, Any]:
        return {"offset_seconds": clock.offset_seconds, "now": iso_utc(clock.now_datetime())}

    async def get_clock(request: Request) -> Response:
        return JSONResponse(clock_state())

    async def put_clock(request: Request) -> Response:
        body = await _body(request)
        if "offset" not in body:
            raise _BadRequest('Send {"offset": "25d"} (a duration such as 90s, 15m, 3h, 25d, 2w, or seconds).')
        try:
            seconds = parse_offset(body["offset"])
        except ValueError as exc:
            raise _BadRequest(f"Bad clock offset: {exc}.") from None
        # Blocking: the change runs the expiry scan (vault reads, outbox writes) before answering,
        # so a caller sees the events published once this returns.
        await run_in_threadpool(clock.set_offset, seconds)
        return JSONResponse(clock_state())

    async def get_events(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(publisher.stats))

    async def put_events(request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body.get("enabled"), bool):
            raise _BadRequest('Send {"enabled": true} or {"enabled": false}.')
        publisher.set_enabled(body["enabled"])
        return JSONResponse(await run_in_threadpool(publisher.stats))

    async def scan(request: Request) -> Response:
        return JSONResponse({"published": await run_in_threadpool(publisher.scan)})

    return [
        Route(f"{ADMIN_PREFIX}/clock", guarded(get_clock), methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/clock", guarded(put_clock), methods=["PUT"]),
        Route(f"{ADMIN_PREFIX}/events", guarded(get_events), methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/events", guarded(put_events), methods=["PUT"]),
        Route(f"{ADMIN_PREFIX}/events/scan", guarded(scan), methods=["POST"]),
    ]


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _BadRequest(f"The request body is over {MAX_BODY} bytes.")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise _BadRequest("The request body is not JSON.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)
