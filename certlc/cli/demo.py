"""``certlc demo``: show the main job end to end on the local stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError


def demo(
    *,
    state_dir: Annotated[Path, Parameter(help="Where the demo keeps its state (vault, CA, Prefect).")] = Path(
        ".certlc/demo"),
    json_output: Annotated[bool, Parameter(name="--json", help="Print the report as JSON.")] = False,
) -> None:
    """Seed a local Key Vault with expiring certificates and renew them through Prefect.

    Starts the Key Vault emulator and a Prefect server on loopback (or uses $PREFECT_API_URL),
    seeds certificates from the dev CA, runs the sweep twice and checks that every due
    certificate got exactly one new version with the same subject, SANs, key and template, and
    that nothing else was touched. Exits 0 only if all of that holds.
    """
    from certlc.demo import run_demo

    def progress(message: str) -> None:
        print(f"certlc demo: {message}", file=sys.stderr)

    try:
        report = run_demo(state_dir, progress=progress)
    except CertlcError as exc:
        exit_with_error(exc.message, 1)
    if json_output:
        print(json.dumps({"certificates": report["certificates"], "ok": report["ok"],
                          "second_sweep_renewed": report["second_sweep_renewed"], "logs": report["logs"]},
                         indent=2))
    else:
        _print_table(report)
    raise SystemExit(0 if report["ok"] else 1)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="certlc demo: vault 'demo' after the sweep")
    table.add_column("certificate", no_wrap=True)
    for column in ("template", "key", "SANs kept", "expiry old → new", "thumbprint old → new", "outcome"):
        table.add_column(column, no_wrap=True)
    for row in report["certificates"]:
        old, new = row["old_not_after"][:10], row["new_not_after"][:10]
        expiry = f"{old} → {new}" if row["renewed"] else old
        thumb = f"{row['old_thumbprint'][:8]} → {row['new_thumbprint'][:8]}" if row["renewed"] else row["old_thumbprint"][:8]
        kept = ("yes" if row["sans_kept"] else "[red]NO[/red]") + f" ({len(row['sans'])})"
        outcome = row["outcome"] if row["due"] else "not due, untouched"
        table.add_row(row["name"], row["template"], row["key"], kept, expiry, thumb, outcome)
    # Piped output defaults to 80 columns, which folds every cell; the table needs about 130.
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(f"second sweep renewed: {', '.join(report['second_sweep_renewed']) or 'nothing'}")
    console.print(f"logs: {report['logs']}")
    console.print("[green]OK[/green]: every due certificate renewed once, nothing else touched"
                  if report["ok"] else "[red]FAILED[/red]: a promise did not hold; see the table and the logs")
