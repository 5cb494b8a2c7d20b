"""``certlc webhook``: the Event Grid receiver, served by uvicorn."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.cli._common import settings_or_exit
from certlc.errors import CertlcError

__all__ = ["webhook"]


def webhook(
    *,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    host: Annotated[str | None, Parameter(help="Address to listen on (default webhook.host).")] = None,
    port: Annotated[int | None, Parameter(help="Port to listen on (default webhook.port).")] = None,
) -> None:
    """Receive Key Vault events from Event Grid and start their renewals (needs PREFECT_API_URL).

    Serves POST/OPTIONS /api/events (Event Grid schema and CloudEvents, both handshakes) and
    GET /healthz. Every delivery must carry webhook.shared_key (?key= or X-Certlc-Key). Each
    accepted event goes on the storage queue and starts the renew-certificate deployment; the
    answer is 200 only after both, 503 otherwise (Event Grid delivers again).
    """
    settings = settings_or_exit(config)
    if config is not None:
        os.environ["CERTLC_CONFIG"] = str(config.resolve())
    if settings.webhook.shared_key is None:
        exit_with_error("webhook.shared_key is not set: without it anyone who reaches the receiver could start "
                        "renewals; set it (or CERTLC_WEBHOOK__SHARED_KEY) and put it in the Event Grid endpoint URL", 2)
    if not os.environ.get("PREFECT_API_URL"):
        exit_with_error("no Prefect server: set PREFECT_API_URL to the server the worker uses", 2)
    # Prefect's client retries a busy server's 503 up to 5 times (2 + 4 + 8 + 16 + 32 s): longer
    # than Event Grid waits (30 s). Fewer retries answer 503 in time, and Event Grid retries.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per delivery is ours; the SDKs' per-request lines would be noise (and a URL can
    # carry a key).
    for noisy in ("azure", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import uvicorn

    from certlc.queue import RenewalQueue, queue_clients
    from certlc.webhook import create_app
    from certlc.webhook.sink import DeploymentStarter, RenewalSink

    sock = _listen(host or settings.webhook.host, settings.webhook.port if port is None else port)
    queue = None
    if settings.webhook.enqueue:
        try:
            queue = RenewalQueue(*queue_clients(settings), settings.queue)
            queue.ensure()
        except CertlcError as exc:
            exit_with_error(f"{exc.message} (or set webhook.enqueue = false to only start runs)", 2)
    _check_deployment(settings.webhook.deployment)
    starter = DeploymentStarter(settings.webhook.deployment, max_concurrent=settings.webhook.max_concurrent_starts)
    app = create_app(settings, RenewalSink(starter, queue), on_alert=_raise_alert,
                     queue_depth=queue.depth if queue is not None else None)
    tls = settings.webhook
    # access_log off: the access line would carry the query string, i.e. the shared key.
    config = uvicorn.Config(app, ssl_certfile=str(tls.tls_certificate) if tls.tls_certificate else None,
                            ssl_keyfile=str(tls.tls_key) if tls.tls_key else None,
                            access_log=False, log_config=None, timeout_graceful_shutdown=5)
    try:
        config.load()  # reads the TLS files now, so a bad one is one line, not a traceback
    except (OSError, ValueError) as exc:
        exit_with_error(f"the webhook cannot use its TLS certificate or key: {exc}", 2)
    uvicorn.Server(config).run(sockets=[sock])


def _raise_alert(alert: Any) -> None:
    """An agent's alert as the flows raise theirs: an ERROR line and a ``certlc.alert.<kind>``
    Prefect event, which an automation can match to page someone."""
    from prefect.events import emit_event

    from certlc.webhook.receiver import log_alert

    log_alert(alert)
    resource = f"certlc.rollout.{alert.details['host']}.{alert.details['certificate']}"
    emit_event(event=f"certlc.alert.{alert.kind}", resource={"prefect.resource.id": resource},
               payload={"summary": alert.summary, **alert.details})


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a port in use or an address this host does not have
    is one line and exit 2 (uvicorn would log it and exit 3)."""
    if not 0 <= port <= 65535:
        exit_with_error(f"port {port} is not between 0 and 65535", 2)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        exit_with_error(f"the webhook cannot listen on {host}:{port}: {exc.strerror}", 2)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _check_deployment(name: str) -> None:
    """Warn (do not fail) when the deployment is missing or the server is down: the receiver
    answers 503 until it is there, and Event Grid keeps retrying."""
    from prefect.client.orchestration import get_client

    log = logging.getLogger("certlc.webhook")
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except Exception as exc:
        log.warning("webhook: deployment %s is not usable yet (%s); deliveries get 503 until it is "
                    "(run `prefect deploy --all`)", name, type(exc).__name__)
