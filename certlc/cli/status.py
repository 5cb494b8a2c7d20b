"""``certlc status``: every certificate in the configured vaults, as the dashboard shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from certlc.cli._common import settings_or_exit

__all__ = ["status"]

_COLOURS = {"Expired": "red", "ExpiringSoon": "yellow", "NotExpired": "green"}


def status(
    *,
    config: Annotated[Path | None, Parameter(env_var="CERTLC_CONFIG", show_default=False)] = None,
    vault: Annotated[list[str] | None, Parameter(help="Only this vault (repeatable).", negative_iterable="")] = None,
    json_output: Annotated[bool, Parameter(name="--json", negative="", help="Print JSON for scripts.")] = False,
    record: Annotated[bool, Parameter(negative="", help="Also record this inventory in the history store "
                                                        "(what the inventory flow does; /metrics and the "
                                                        "dashboard show the last one).")] = False,
) -> None:
    """Show every certificate in the configured vaults: expiry, status, last renewal, rollout.

    Status: Expired, ExpiringSoon (fewer than inventory.threshold_days left) or NotExpired. The
    last renewal outcome comes from the history store, the rollout from the agents' reports.
    Exit codes: 0 every vault was read, 1 a vault could not be read, 2 bad configuration.
    """
    import logging

    from certlc.cli._app import exit_with_error
    from certlc.inventory import take_inventory

    settings = settings_or_exit(config)
    logging.getLogger("azure").setLevel(logging.ERROR)
    unknown = [v for v in vault or [] if v not in {x.name for x in settings.vaults}]
    if unknown:
        exit_with_error(f"no vault named {', '.join(unknown)} in the configuration "
                        f"(configured: {', '.join(v.name for v in settings.vaults)})", 2)
    inventory = take_inventory(settings, vaults=vault)
    if record:
        import datetime as dt

        from certlc.history import History

        History(settings.history_path).record_inventory(
            [r.to_dict() for r in inventory.rows],
            run_at=dt.datetime.fromisoformat(inventory.generated_at.replace("Z", "+00:00")))
    if json_output:
        print(json.dumps(inventory.to_dict(), indent=2))
    else:
        _print(inventory)
    raise SystemExit(1 if inventory.vault_errors else 0)


def _rollout(hosts: list[dict[str, Any]]) -> str:
    if not hosts:
        return ""
    current = sum(1 for h in hosts if h["current"])
    stale = sum(1 for h in hosts if h["stale"])
    return f"{current}/{len(hosts)} current" + (f", {stale} stale" if stale else "")


def _print(inventory: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = inventory.to_dict()["counts"]
    table = Table(title=f"certlc status at {inventory.generated_at}: "
                        f"[red]{counts['Expired']} expired[/red], [yellow]{counts['ExpiringSoon']} expiring soon[/yellow], "
                        f"[green]{counts['NotExpired']} not expired[/green]")
    for column in ("vault", "certificate", "subject", "template", "issuer", "expires", "days left", "status",
                   "last renewal", "recipients", "rollout"):
        table.add_column(column, overflow="fold")
    for row in inventory.rows:
        colour = _COLOURS.get(row.status, "white")
        last = f"{row.last_outcome} ({row.last_reason})" if row.last_outcome else ""
        table.add_row(row.vault, row.name, row.subject or (row.error or ""), row.template or "", row.issuer or "",
                      (row.not_after or "")[:10], f"{row.days_left:g}" if row.days_left is not None else "",
                      f"[{colour}]{row.status}[/{colour}]", last, ", ".join(row.recipients), _rollout(row.rollout))
    console = Console(width=max(Console().width, 160))
    console.print(table)
    for name, problem in inventory.vault_errors.items():
        console.print(f"[red]vault {name} could not be read[/red]: {problem}")
