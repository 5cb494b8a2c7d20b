"""``certlc emulator``: run the local Key Vault emulator in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError

__all__ = ["emulator", "emulator_clock"]


def emulator(
    *,
    config: Path | None = None,
    state_dir: Path | None = None,
    port: int | None = None,
    identity_port: int | None = None,
    vault: Annotated[list[str] | None, Parameter(consume_multiple=True, negative=())] = None,
    clock_offset: str | None = None,
) -> None:
    """Run the local Key Vault emulator until Ctrl-C or SIGTERM.

    Serves the Key Vault certificates/secrets API over HTTPS (one port per vault) and a
    managed-identity token endpoint, and writes STATE_DIR/endpoints.json when ready.

    Parameters
    ----------
    config
        certlc TOML configuration file (default: $CERTLC_CONFIG, else built-in defaults).
    state_dir
        Where the emulator keeps its state (default: emulator.state_dir from the config, else STATE_DIR/emulator).
    port
        HTTPS port of the first vault; further vaults use the next ports. 0 = any free ports.
    identity_port
        Port of the managed-identity endpoint (plain http on loopback). 0 = any free port.
    vault
        Names of the vaults to emulate (repeat or list several), replacing emulator.vaults.
    clock_offset
        Shift the emulator's clock, e.g. 25d (replaces emulator.clock_offset); change it later with
        `certlc emulator-clock`.
    """
    # Heavy imports (uvicorn, cryptography, the settings tree) only when the command runs.
    from certlc.config import load_settings
    from certlc.emulator import start_in_thread

    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["port"] = port
    if identity_port is not None:
        overrides["identity_port"] = identity_port
    if vault:
        overrides["vaults"] = vault
    if clock_offset is not None:
        overrides["clock_offset"] = clock_offset
    try:
        settings = load_settings(config, **({"emulator": overrides} if overrides else {}))
        path = state_dir.resolve() if state_dir is not None else settings.emulator_path
        handle = start_in_thread(settings.emulator, path)
    except CertlcError as exc:
        exit_with_error(str(exc), 2)
    except OSError as exc:
        exit_with_error(f"the emulator cannot use its state directory: {exc}", 2)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _print_endpoints(handle.endpoints, path)
        _print_events(settings.emulator, handle.clock.offset_seconds)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
    finally:
        print("certlc emulator: stopping", flush=True)
        handle.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_endpoints(endpoints: Any, state_dir: Path) -> None:
    lines = [f"certlc emulator: running (state: {state_dir})"]
    lines += [f"  vault {name}: {url}" for name, url in endpoints.vault_urls.items()]
    lines += [
        f"  identity endpoint: {endpoints.identity_endpoint}",
        f"  CA bundle: {endpoints.ca_bundle}",
        "  principals: " + ", ".join(f"{n} (client id {c})" for n, c in endpoints.principals.items()),
        "Set for clients (DefaultAzureCredential uses the managed identity):",
        f"  IDENTITY_ENDPOINT={endpoints.identity_endpoint}",
        f"  IDENTITY_HEADER=<the identity_header value in {state_dir / 'endpoints.json'}>",
        "  AZURE_CLIENT_ID=<a principal's client id>   (or managed_identity_client_id=...)",
        f"  REQUESTS_CA_BUNDLE={endpoints.ca_bundle}   (or connection_verify=... on each client)",
        "  and verify_challenge_resource=False on CertificateClient/SecretClient (the vault is https://localhost).",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def _print_events(settings: Any, offset_seconds: float) -> None:
    from certlc.emulator.clock import describe_offset
    from certlc.emulator.senders import describe  # never prints a webhook key or connection string

    lines = [f"  clock offset: {describe_offset(offset_seconds)} (change it: certlc emulator-clock 25d --state-dir ...)"]
    if settings.subscriptions:
        lines.append(f"  Event Grid subscriptions (expiry scan every {settings.event_scan_seconds:g}s):")
        lines += [f"    {sub.name}: {describe(sub)}; events: {', '.join(t.rsplit('.', 1)[-1] for t in sub.event_types)}"
                  for sub in settings.subscriptions]
    else:
        lines.append("  Event Grid subscriptions: none (emulator.subscriptions)")
    print("\n".join(lines), flush=True)


def emulator_clock(
    offset: str | None = None,
    *,
    config: Path | None = None,
    state_dir: Path | None = None,
) -> None:
    """Show or shift the clock of a running emulator (then it scans for expiry events at once).

    Parameters
    ----------
    offset
        New offset from real time: 90, 90s, 15m, 3h, 25d, 2w (negative: --offset=-1d); 0 resets it. Omit to show it.
    config
        certlc TOML configuration file (default: $CERTLC_CONFIG, else built-in defaults).
    state_dir
        The running emulator's state directory (default: emulator.state_dir, else STATE_DIR/emulator).
    """
    from certlc.config import load_settings
    from certlc.emulator.admin import get_clock, set_clock_offset

    try:
        path = state_dir.resolve() if state_dir is not None else load_settings(config).emulator_path
        state = get_clock(path) if offset is None else set_clock_offset(path, offset)
    except CertlcError as exc:
        exit_with_error(str(exc), 2)
    from certlc.emulator.clock import describe_offset

    print(f"certlc emulator clock: now {state['now']} (offset {describe_offset(state['offset_seconds'])})", flush=True)
