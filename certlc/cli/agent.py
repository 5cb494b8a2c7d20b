"""``certlc agent``: keep this server's certificate files at the vault's latest versions."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from certlc.cli._app import exit_with_error

__all__ = ["agent"]


def agent(
    *,
    config: Annotated[Path | None, Parameter(env_var="CERTLC_AGENT_CONFIG", show_default=False)] = None,
    once: Annotated[bool, Parameter(negative="")] = False,
    verbose: Annotated[bool, Parameter(name=["--verbose", "-v"], negative="")] = False,
) -> None:
    """Install the observed certificates from Key Vault, as the Key Vault VM extension does.

    Reads the extension's settings JSON (or TOML) with certlc's additions (see docs/agent.md),
    asks each vault for the latest version of each observed secret once per polling interval,
    and installs a version only when it changed. Exit codes with --once: 0 every certificate
    installed or unchanged, 1 one was refused, failed or its vault was unreachable, 2 bad settings.

    Parameters
    ----------
    config
        The settings file: the extension's JSON (secretsManagementSettings, ...) or TOML.
    once
        One pass, then exit (for cron or a systemd timer); default: poll until stopped.
    verbose
        Log each certificate's outcome, not only installs, refusals and failures.
    """
    from certlc.agent.deploy import deploy
    from certlc.agent.poll import Poller, sdk_secret_getter
    from certlc.agent.settings import load_agent_settings
    from certlc.errors import CertlcError

    if config is None:
        exit_with_error("no settings: give --config FILE (the Key Vault VM extension's settings JSON) "
                        "or set CERTLC_AGENT_CONFIG", 2)
    _setup_logging(verbose)
    try:
        settings = load_agent_settings(config)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    poller = Poller(settings, sdk_secret_getter(settings), deploy=deploy)
    log = logging.getLogger("certlc.agent")
    if once:
        report = poller.poll_once()
        for watched in settings.watched:
            outcome = report.outcomes.get(watched.key, "")
            print(f"{watched.key}: {outcome}{_detail(outcome, poller.installer(watched).current_version())}")
        missing = [w.key for w in settings.watched if poller.installer(w).current_version() is None]
        if missing:
            log.error("%snot installed: %s", "requireInitialSync: " if settings.secrets_management.require_initial_sync
                      else "", ", ".join(missing))
        raise SystemExit(0 if report.ok and not missing else 1)

    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("watching %d certificate(s), polling every %d s", len(settings.watched), settings.polling_interval)
    poller.run(stop)


def _detail(outcome: str, current: str | None) -> str:
    """What follows the outcome on a --once line: the version now in place (never the one that failed)."""
    from certlc.agent.poll import Outcome

    if current is None:
        return ""
    if outcome in (Outcome.INSTALLED, Outcome.UNCHANGED):
        return f" version {current}"
    return f" (version {current} is in place)"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("certlc.agent")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # The SDK and DefaultAzureCredential log every request and credential tried; our lines say what failed.
    logging.getLogger("azure").setLevel(logging.ERROR)
