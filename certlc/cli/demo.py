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
                          "second_sweep_renewed": report["second_sweep_renewed"]}, indent=2))
    else:
        _print_table(report)
    raise SystemExit(0 if report["ok"] else 1)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="certlc demo: vault 'demo'", show_lines=False)
    for column in ("certificate", "template", "expiry old → new", "thumbprint old → new", "SANs kept", "outcome"):
        table.add_column(column)
    for row in report["certificates"]:
        expiry = row["old_not_after"] + (f" → {row['new_not_after']}" if row["renewed"] else "")
        thumb = row["old_thumbprint"][:12] + (f"… → {row['new_thumbprint'][:12]}…" if row["renewed"] else "…")
        kept = ("yes" if row["sans_kept"] else "NO") + f" ({len(row['sans'])})"
        outcome = row["outcome"] if row["due"] else "not due, untouched"
        table.add_row(row["name"], row["template"], expiry, thumb, kept, outcome)
    console = Console()
    console.print(table)
    console.print(f"second sweep renewed: {', '.join(report['second_sweep_renewed']) or 'nothing'}")
    console.print(f"Prefect runs: {report['prefect_api'].removesuffix('/api')}")
    console.print("[green]OK[/green]: every due certificate renewed once, nothing else touched"
                  if report["ok"] else "[red]FAILED[/red]: see the table and .certlc/demo/logs/")
