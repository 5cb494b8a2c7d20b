"""Helpers shared by commands: settings with one-line errors, the Prefect environment, logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from certlc.cli._app import exit_with_error
from certlc.config import Settings, load_settings
from certlc.errors import CertlcError


def settings_or_exit(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    if not settings.vaults:
        where = f"config file {config}" if config else (
            f"config file {os.environ['CERTLC_CONFIG']}" if os.environ.get("CERTLC_CONFIG")
            else "configuration (no --config given and $CERTLC_CONFIG is not set)")
        exit_with_error(f"{where} names no vaults; add [[vaults]] entries (see the README)", 2)
    return settings


def prepare_prefect_env(settings: Settings) -> None:
    """Point Prefect's result storage at certlc's state before Prefect is imported.

    Prefect reads its settings at import time, so this must run before any flow module loads.
    """
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(settings.results_path))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    settings.results_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # DefaultAzureCredential logs every credential it tries; the one-line error says what failed.
    logging.getLogger("azure").setLevel(logging.ERROR)


def require_prefect_server() -> None:
    """Flows run against a Prefect server; say so in one line when there is none."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        exit_with_error("no Prefect server: set PREFECT_API_URL to your server's API, e.g. "
                        "http://127.0.0.1:4200/api after `prefect server start` (`certlc demo` starts one itself)", 2)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        exit_with_error(f"the Prefect server at {url} does not answer: {type(problem).__name__}", 2)


class _ExpectedErrorsWithoutTraceback(logging.Formatter):
    """Console formatter: expected failures (certlc's own errors) print one line, not a traceback.

    The traceback still reaches the Prefect API (the UI), whose handler formats separately; bugs
    (any other exception) keep their traceback on the console too.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CertlcError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def quiet_expected_tracebacks() -> None:
    """Wrap the console handlers Prefect set up (call after importing Prefect)."""
    # Prefect's console handler sits on the root logger; its API handlers on the run loggers.
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler.formatter, _ExpectedErrorsWithoutTraceback):
                handler.setFormatter(_ExpectedErrorsWithoutTraceback(handler.formatter))
