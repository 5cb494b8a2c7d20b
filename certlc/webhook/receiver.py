"""The Event Grid receiver: authenticate a delivery, answer the handshakes, hand events on.

The ASGI app is built around an :class:`EventSink` (what to do with an accepted event: put it on
the storage queue and start the renewal flow run), so the HTTP contract is the same whatever
the sink. Contract, as Event Grid expects it:

* every request carries the shared key (query ``key=`` or header ``X-Certlc-Key``), compared in
  constant time; missing or wrong → 401 (Event Grid does not retry 401); with no key configured
  every delivery is refused (fail closed);
* with ``webhook.entra`` set, every request must also carry an Entra ID bearer token
  (:mod:`certlc.webhook.auth`); missing or invalid → 401 with ``WWW-Authenticate: Bearer``,
  signing keys that cannot be fetched → 503 (Event Grid delivers again);
* Event Grid schema handshake: a ``SubscriptionValidationEvent`` is answered 200 with
  ``{"validationResponse": <code>}``; CloudEvents handshake: ``OPTIONS`` with
  ``WebHook-Request-Origin`` is answered with ``WebHook-Allowed-Origin`` for allowed origins;
* a body over the size limit → 413; not JSON or not an event → 400; a content type that is not
  JSON → 415; an event for a vault not in the configuration → 400, and that vault is never
  contacted; an event type certlc does not handle → 400 naming it. In all these cases nothing
  is handed on: a delivery is checked whole before any of its events is;
* the answer is 200 only after the sink took every event; a sink failure → 503, so Event Grid
  delivers again (the sink's idempotency keys make that harmless).

The same app takes the agents' rollout reports (``POST /api/rollout`` with ``webhook.rollout_key``,
see :mod:`certlc.rollout`) and serves them grouped per certificate (``GET /api/rollout`` with the
shared key).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from certlc.config import Settings, VaultSettings
from certlc.drain import Alert
from certlc.errors import CertlcError, InvalidInput
from certlc.events import (
    KeyVaultEvent,
    UnrecognizedEvent,
    ValidationEvent,
    encode_queue_message,
    parse_delivery,
    vault_for,
)
from certlc.history import History
from certlc.inventory import summarise
from certlc.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from certlc.metrics import render_metrics
from certlc.rollout import RolloutStore, by_certificate, is_stale, new_alerts, parse_report, vault_key
from certlc.webhook.auth import BearerVerifier, KeysUnavailable, TokenRejected

__all__ = ["AcceptedEvent", "EventSink", "create_app"]

log = logging.getLogger("certlc.webhook")

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)  # how far ahead of ours an agent's clock may be
JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")


@dataclass(frozen=True)
class AcceptedEvent:
    event: KeyVaultEvent
    vault: VaultSettings


class EventSink(Protocol):
    """Where accepted events go. ``accept`` must be idempotent per event id, and raise on failure."""

    def accept(self, events: Sequence[AcceptedEvent]) -> None: ...


def _error(status: int, reason: str, message: str) -> JSONResponse:
    log.warning("webhook: refused delivery (%d %s): %s", status, reason, message)
    return JSONResponse({"error": {"code": reason, "message": message}}, status_code=status)


def _matches(given: str, expected: SecretStr | None) -> bool:
    """``given`` is the configured key (constant time); never when no key is configured."""
    return expected is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def _bearer(request: Request) -> str:
    authorization = request.headers.get("authorization", "")
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


def _authenticated(request: Request, settings: Settings) -> bool:
    if settings.webhook.shared_key is None:
        # Fail closed: a receiver without a key would start renewals for anyone who can reach it.
        log.error("webhook: webhook.shared_key is not configured; refusing every delivery")
        return False
    given = request.query_params.get("key") or request.headers.get("x-certlc-key") or ""
    return _matches(given, settings.webhook.shared_key)


def _agent_key(request: Request) -> str:
    """The key an agent sent: ``Authorization: Bearer <key>`` or ``X-Certlc-Key: <key>``."""
    return _bearer(request) or request.headers.get("x-certlc-key", "")


async def _bearer_refusal(request: Request, verifier: BearerVerifier | None, what: str) -> Response | None:
    """None when no bearer token is required or the request's is valid; else the 401/503 answer."""
    if verifier is None:
        return None
    try:
        await run_in_threadpool(verifier.verify_header, request.headers.get("authorization"))
    except TokenRejected as exc:
        response = _error(401, "Unauthorized", f"{what} refused: {exc.reason}")
        response.headers["WWW-Authenticate"] = (
            "Bearer" if exc.reason == "missing bearer token" else 'Bearer error="invalid_token"')
        return response
    except KeysUnavailable as exc:
        log.error("webhook: cannot check the bearer token of a %s: %s", what, exc.reason)
        return JSONResponse({"error": {"code": "Unavailable", "message": "try again later"}}, status_code=503)
    return None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def log_alert(alert: Alert) -> None:
    log.error("ALERT %s: %s", alert.kind, alert.summary)


def _operator(request: Request, settings: Settings) -> bool:
    """A reader of the estate (GET /api/rollout, /api/inventory, /metrics): the shared key as
    ``?key=``, ``X-Certlc-Key`` or ``Authorization: Bearer`` (how Prometheus sends credentials)."""
    given = request.query_params.get("key") or request.headers.get("x-certlc-key") or _bearer(request)
    return _matches(given, settings.webhook.shared_key)


async def _json_body(request: Request, limit: int, types: tuple[str, ...], what: str) -> bytes | Response:
    """The body of a JSON request, or the 415 / 413 answer that refuses it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in types:
        return _error(415, "UnsupportedMediaType", f"content type {content_type or 'none'!r} is not JSON")
    body = await _read_body(request, limit)
    if body is None:
        return _error(413, "PayloadTooLarge", f"{what} exceeds {limit} bytes")
    return body


def create_app(settings: Settings, sink: EventSink, *, on_alert: Callable[[Alert], None] = log_alert,
               queue_depth: Callable[[], int | None] | None = None) -> Starlette:
    """The receiver. ``on_alert`` is called once for each new alert an agent's rollout report
    carries; ``queue_depth`` (optional) gives the storage queue's depth for /metrics."""
    verifier = BearerVerifier(settings.webhook.entra) if settings.webhook.entra is not None else None

    async def deliver(request: Request) -> Response:
        if not _authenticated(request, settings):
            return _error(401, "Unauthorized", "delivery without the shared key, or with a wrong one")
        if (refusal := await _bearer_refusal(request, verifier, "delivery")) is not None:
            return refusal
        body = await _json_body(request, settings.webhook.max_body_bytes, JSON_TYPES, "delivery")
        if isinstance(body, Response):
            return body
        try:
            events = parse_delivery(body)
        except InvalidInput as exc:
            return _error(400, exc.reason, exc.message)
        handshakes = [e for e in events if isinstance(e, ValidationEvent)]
        if handshakes:
            if len(events) > 1:  # Event Grid sends the handshake alone; answering it would drop the rest
                return _error(400, "EventInvalid", "a subscription validation event must come alone, "
                              f"not in a delivery of {len(events)} events")
            log.info("webhook: subscription validation answered (event %s)", handshakes[0].id)
            return JSONResponse({"validationResponse": handshakes[0].validation_code})
        accepted: list[AcceptedEvent] = []
        for event in events:
            if isinstance(event, UnrecognizedEvent):
                return _error(400, "EventTypeUnsupported",
                              f"event {event.id!r} has type {event.type!r}, which certlc does not handle")
            assert isinstance(event, KeyVaultEvent)
            try:
                vault = vault_for(event, settings)
            except InvalidInput as exc:
                return _error(400, exc.reason, exc.message)
            if event.renews:
                try:  # it must fit in a queue message, or no retry could ever hand it on
                    encode_queue_message(event.raw)
                except InvalidInput as exc:
                    return _error(413, exc.reason, exc.message)
                accepted.append(AcceptedEvent(event, vault))
        try:
            # The sink does blocking I/O (queue, Prefect API): keep it off the event loop.
            await run_in_threadpool(sink.accept, accepted)
        except InvalidInput as exc:  # no retry can fix it: say so, so Event Grid stops
            return _error(400, exc.reason, exc.message)
        except CertlcError as exc:
            log.error("webhook: could not hand on %d event(s): %s", len(accepted), exc.message)
            return JSONResponse({"error": {"code": exc.reason, "message": "try again later"}}, status_code=503)
        except Exception as exc:  # never a 200 for an event that was not handed on
            log.error("webhook: could not hand on %d event(s): %s", len(accepted), type(exc).__name__)
            return JSONResponse({"error": {"code": "Unavailable", "message": "try again later"}}, status_code=503)
        for item in accepted:
            log.info("webhook: accepted %s for %s/%s version %s (event %s)", item.event.type.value,
                     item.vault.name, item.event.object_name, item.event.version, item.event.id)
        return JSONResponse({"accepted": [a.event.id for a in accepted]})

    async def handshake(request: Request) -> Response:
        # CloudEvents webhook validation (abuse protection): consent by echoing the origin.
        if not _authenticated(request, settings):
            return _error(401, "Unauthorized", "handshake without the shared key, or with a wrong one")
        if (refusal := await _bearer_refusal(request, verifier, "handshake")) is not None:
            return refusal
        origin = request.headers.get("webhook-request-origin", "").strip()
        allowed = settings.webhook.allowed_origins
        if not origin or ("*" not in allowed and not any(origin == a or origin.endswith("." + a) for a in allowed)):
            return _error(403, "OriginNotAllowed", f"origin {origin or 'none'!r} is not allowed to deliver here")
        log.info("webhook: CloudEvents validation answered (origin %s)", origin)
        headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST, OPTIONS"}
        rate = request.headers.get("webhook-request-rate")
        if rate:
            headers["WebHook-Allowed-Rate"] = rate
        return Response(status_code=200, headers=headers)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    store = RolloutStore(settings.rollout_path)
    vault_names = {vault_key(v.url): v.name for v in settings.vaults}

    async def report_rollout(request: Request) -> Response:
        # Agents authenticate with a key of their own (webhook.rollout_key), never the Event Grid
        # key: a server that is broken into must not be able to start renewals.
        expected = settings.webhook.rollout_key
        if expected is None:
            return _error(403, "RolloutDisabled", "rollout reports are not accepted here: set webhook.rollout_key")
        if not _matches(_agent_key(request), expected):
            return _error(401, "Unauthorized", "rollout report without the rollout key, or with a wrong one")
        body = await _json_body(request, settings.webhook.max_body_bytes, ("application/json",), "report")
        if isinstance(body, Response):
            return body
        try:
            report = parse_report(body)
        except InvalidInput as exc:
            return _error(400, exc.reason, exc.message)
        ahead = report.generated_at - dt.datetime.now(dt.UTC)
        if ahead > MAX_CLOCK_SKEW:
            # A report "from the future" would win over every real one until then (newest wins).
            return _error(400, "RolloutInvalid", f"generated_at {report.generated_at.isoformat()} is "
                          f"{int(ahead.total_seconds())} s ahead of this server's clock; check the host's time")
        try:
            previous = await run_in_threadpool(store.get, report.host)
            kept = await run_in_threadpool(store.save, report)
        except OSError as exc:
            log.error("webhook: cannot store the rollout report of %s: %s", report.host, exc.strerror or exc)
            return JSONResponse({"error": {"code": "Unavailable", "message": "try again later"}}, status_code=503)
        log.info("webhook: rollout report from %s (%d certificate(s))%s", report.host, len(report.certificates),
                 "" if kept else ", older than the one kept: ignored")
        if kept:
            for alert in new_alerts(previous.report if previous else None, report):
                try:
                    await run_in_threadpool(on_alert, alert)
                except Exception as exc:  # an alert channel that fails must not lose the report
                    log.error("webhook: could not raise alert %s: %s", alert.kind, type(exc).__name__)
        return JSONResponse({"host": report.host, "certificates": len(report.certificates), "kept": kept})

    history = History(settings.history_path)

    async def metrics(request: Request) -> Response:
        if not _operator(request, settings):
            return _error(401, "Unauthorized", "metrics without the shared key (Authorization: Bearer), or a wrong one")

        def scrape() -> bytes:
            taken_at, rows, counts, renewed = None, [], {}, {}
            if settings.history_path.exists():  # reading must not create the store
                (taken_at, rows), counts, renewed = history.latest_inventory(), history.counts(), history.last_renewed()
            depth = None
            if queue_depth is not None:
                try:
                    depth = queue_depth()
                except Exception as exc:  # a scrape still answers; the gauge is left out
                    log.warning("metrics: queue depth unavailable: %s", type(exc).__name__)
            return render_metrics(taken_at, rows, counts, renewed, depth)

        return Response(await run_in_threadpool(scrape), media_type=METRICS_CONTENT_TYPE)

    async def read_inventory(request: Request) -> Response:
        if not _operator(request, settings):
            return _error(401, "Unauthorized", "request without the shared key, or with a wrong one")
        taken_at, rows = (await run_in_threadpool(history.latest_inventory)) if settings.history_path.exists() \
            else (None, [])
        return JSONResponse({"generated_at": taken_at, "counts": summarise(r["status"] for r in rows),
                             "certificates": rows})

    async def read_rollout(request: Request) -> Response:
        if not _operator(request, settings):
            return _error(401, "Unauthorized", "request without the shared key, or with a wrong one")
        reports = await run_in_threadpool(store.all)
        now = dt.datetime.now(dt.UTC)
        hosts = [{"host": s.report.host, "agent_version": s.report.agent_version,
                  "generated_at": s.report.generated_at.isoformat(), "reported_at": s.received_at.isoformat(),
                  "polling_interval": s.report.polling_interval, "certificates": len(s.report.certificates),
                  "stale": is_stale(s, now)}
                 for s in reports]
        return JSONResponse({"hosts": hosts,
                             "certificates": by_certificate(reports, now=now, vault_names=vault_names)})

    return Starlette(routes=[
        Route("/api/events", deliver, methods=["POST"]),
        Route("/api/rollout", report_rollout, methods=["POST"]),
        Route("/api/rollout", read_rollout, methods=["GET"]),
        Route("/api/inventory", read_inventory, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/events", handshake, methods=["OPTIONS"]),
        Route("/healthz", health, methods=["GET"]),
    ])
