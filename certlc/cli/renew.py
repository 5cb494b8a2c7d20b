"""``certlc renew`` and ``certlc sweep``: run the renewal flows on this host."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.cli._common import prepare_prefect_env, settings_or_exit
from certlc.errors import CertlcError


def _export_config(config: Path | None) -> None:
    # Tasks read the configuration from $CERTLC_CONFIG, also in threads and child processes.
    if config is not None:
        os.environ["CERTLC_CONFIG"] = str(config.resolve())


def renew(
    vault: str,
    name: str,
    *,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Renew one certificate now, through its CA, as a Prefect flow run.

    Parameters
    ----------
    vault
        Name of a configured vault.
    name
        Certificate name in that vault.
    """
    settings = settings_or_exit(config)
    _export_config(config)
    # Preflight, read-only: refuse bad input with one line before any flow run starts.
    from certlc.clients import certificate_client
    from certlc.renewal import resolve_template
    from certlc.vault import read_certificate, validate_name

    try:
        configured = settings.vault(vault)
        validate_name(name, vault)
        snapshot = read_certificate(certificate_client(configured, settings), configured.name, name)
        resolve_template(snapshot, settings.ca_profile_for(configured), settings)
    except CertlcError as exc:
        if exc.reason == "NotFound":
            exit_with_error(f"certificate {name!r} does not exist in vault {vault!r}", 2)
        exit_with_error(exc.message, 2)
    prepare_prefect_env(settings)
    from flows.renew import renew_certificate

    state = renew_certificate(vault=configured.name, name=name, return_state=True)
    try:
        outcome = state.result()
    except CertlcError as exc:
        exit_with_error(f"{vault}/{name}: {exc.message}", 1)
    if json_output:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"{vault}/{name}: {outcome['outcome']} ({outcome['reason']})"
              + (f" new expiry {outcome['new_not_after']}, thumbprint {outcome['new_thumbprint']}"
                 if outcome.get("new_thumbprint") else ""))
    raise SystemExit(0 if outcome["outcome"] in ("Renewed", "AlreadyRenewed", "Pending") else 1)


def sweep(
    *,
    vault: Annotated[list[str] | None, Parameter(help="Only this vault (repeat for several); default all.",
                                                negative="")] = None,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the sweep result as JSON.")] = False,
) -> None:
    """Find every certificate due for renewal in the configured vaults and renew each."""
    settings = settings_or_exit(config)
    _export_config(config)
    try:
        for name in vault or []:
            settings.vault(name)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    if not settings.vaults:
        exit_with_error("no vaults are configured (add [[vaults]] entries to the configuration)", 2)
    prepare_prefect_env(settings)
    from flows.sweep import sweep as sweep_flow

    state = sweep_flow(vaults=vault or None, return_state=True)
    try:
        result = state.result()
    except CertlcError as exc:
        exit_with_error(exc.message, 1)
    if json_output:
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="certlc sweep")
        for column in ("vault", "name", "due", "outcome", "reason", "new expiry"):
            table.add_column(column)
        for row in result["certificates"]:
            table.add_row(row["vault"], row["name"], "yes" if row["due"] else "no", row["outcome"],
                          str(row["reason"] or ""), str(row["new_not_after"] or ""))
        Console().print(table)
    failed = [r for r in result["results"] if r["outcome"] == "Failed"]
    raise SystemExit(1 if failed else 0)
