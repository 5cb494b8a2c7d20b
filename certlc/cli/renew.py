"""``certlc renew`` and ``certlc sweep``: run the renewal flows on this host."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.cli._common import (
    prepare_prefect_env,
    quiet_expected_tracebacks,
    require_prefect_server,
    settings_or_exit,
)
from certlc.errors import CertlcError, InvalidInput


def _export_config(config: Path | None) -> None:
    # Tasks read the configuration from $CERTLC_CONFIG, also in threads and child processes.
    if config is not None:
        os.environ["CERTLC_CONFIG"] = str(config.resolve())


def renew(
    vault: str,
    name: str,
    *,
    force: Annotated[bool, Parameter(help="Renew even if the certificate is not due yet.")] = False,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Renew one certificate now, through its CA, as a Prefect flow run (needs PREFECT_API_URL).

    A certificate that is not due is left alone unless --force is given; a duplicate run waits for
    the one in progress and then finds nothing to do. Exit 0: renewed, not due, or held by the CA
    for approval; 1: failed or denied; 2: bad input or configuration (nothing written).

    Parameters
    ----------
    vault
        Name of a configured vault.
    name
        Certificate name in that vault.
    """
    settings = settings_or_exit(config)
    _export_config(config)
    prepare_prefect_env(settings)
    # Preflight, read-only: refuse bad input with one line before any flow run starts.
    from certlc.ca import connector_for
    from certlc.clients import certificate_client
    from certlc.renewal import choose_ca
    from certlc.vault import read_certificate, validate_name

    try:
        configured = settings.vault(vault)
        validate_name(name, vault)
        connector_for(configured.ca_profile, settings)
        snapshot = read_certificate(certificate_client(configured, settings), configured.name, name)
        choose_ca(snapshot, configured, settings)
    except InvalidInput as exc:
        if exc.reason == "NotFound":
            exit_with_error(f"certificate {name!r} does not exist in vault {vault!r}", 2)
        exit_with_error(exc.message, 2)
    except CertlcError as exc:  # the vault is unreachable or refuses our identity
        exit_with_error(exc.message, 1)
    require_prefect_server()
    from flows.renew import renew_certificate

    quiet_expected_tracebacks()
    try:
        state = renew_certificate(vault=configured.name, name=snapshot.name, force=force, return_state=True)
        outcome = state.result()
    except KeyboardInterrupt:
        exit_with_error(f"{vault}/{name}: interrupted; run the same command again to resume", 130)
    except CertlcError as exc:
        exit_with_error(f"{vault}/{name}: {exc.message}", 1)
    if json_output:
        print(json.dumps(outcome, indent=2))
    else:
        print(describe_outcome(outcome))
    raise SystemExit(0 if outcome["outcome"] in ("Renewed", "AlreadyRenewed", "Pending", "NotDue") else 1)


def describe_outcome(outcome: dict) -> str:
    """One line a person can act on."""
    where = f"{outcome['vault']}/{outcome['name']}"
    kind = outcome["outcome"]
    if kind in ("Renewed", "AlreadyRenewed"):
        return (f"{where}: renewed; new version {outcome['new_version']} expires {outcome['new_not_after']} "
                f"(was {outcome['old_not_after']}), thumbprint {outcome['new_thumbprint']}")
    if kind == "NotDue":
        return f"{where}: not due (expires {outcome['old_not_after']}); nothing done — use --force to renew anyway"
    if kind == "Pending":
        return f"{where}: held by the CA for a CA manager's approval (CA request {outcome['ca_request_id']})"
    if kind == "Denied":
        return f"{where}: denied by the CA: {outcome['message']}"
    return f"{where}: {kind} ({outcome['reason']}): {outcome.get('message') or ''}"


def sweep(
    *,
    vault: Annotated[list[str] | None, Parameter(help="Only this vault (repeat for several); default all.",
                                                negative="")] = None,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the sweep result as JSON.")] = False,
) -> None:
    """Find every certificate due for renewal in the configured vaults and renew each (needs PREFECT_API_URL).

    Exit 0 when every due certificate was renewed or is held by its CA for approval; 1 when a
    renewal failed or was denied; 2 on bad input or configuration.
    """
    settings = settings_or_exit(config)
    _export_config(config)
    try:
        for name in vault or []:
            settings.vault(name)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    prepare_prefect_env(settings)
    require_prefect_server()
    from flows.sweep import sweep as sweep_flow

    quiet_expected_tracebacks()
    try:
        state = sweep_flow(vaults=vault or None, return_state=True)
        result = state.result()
    except KeyboardInterrupt:
        exit_with_error("sweep interrupted; the next sweep picks up where it stopped", 130)
    except CertlcError as exc:
        exit_with_error(exc.message, 1)
    if json_output:
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="certlc sweep")
        for column in ("vault", "certificate", "expires", "due", "outcome", "reason", "new expiry"):
            table.add_column(column, no_wrap=True)
        for row in result["certificates"]:
            table.add_row(row["vault"], row["name"], (row.get("not_after") or "")[:10], "yes" if row["due"] else "no",
                          row["outcome"], str(row["reason"] or ""), (row["new_not_after"] or "")[:10])
        Console(width=max(Console().width, 120)).print(table)
    # Pending (waiting for a CA manager) is normal; a failure or a denial needs someone's attention.
    attention = [r for r in result["results"] if r["outcome"] in ("Failed", "Denied")]
    raise SystemExit(1 if attention else 0)
