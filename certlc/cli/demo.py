"""``certlc demo``: show the main job end to end on the local stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError


def demo(
    *,
    state_dir: Annotated[Path, Parameter(help="Where the demo keeps its state (vault, CA, Prefect).")] = Path(
        ".certlc/demo"),
    json_output: Annotated[bool, Parameter(name="--json", help="Print the report as JSON.")] = False,
    ca: Annotated[Literal["devca", "adcs-web", "cfssl", "acme"], Parameter(
        help="The CA that renews: the dev CA in-process, AD CS web enrollment (simulator over HTTPS), "
             "a real cfssl serve, or a real Pebble (ACME, http-01).")] = "devca",
) -> None:
    """Seed a local Key Vault with expiring certificates and renew them from Key Vault's events.

    Starts the local stack (as `certlc up`), seeds certificates from the dev CA, moves the
    emulator's clock 25 days ahead so Key Vault sends near-expiry events to the webhook and the
    queue, waits for the worker's renewals, runs a sweep, and checks that every certificate in
    Key Vault's window got exactly one new version with the same subject, SANs, key and template,
    and that nothing else was touched. A certlc agent watches three of them and must install each
    renewed version within one polling interval and report it to the webhook's rollout state. Exits 0 only if all of that holds; stops the stack after.
    """
    from certlc.demo import run_demo

    def progress(message: str) -> None:
        print(f"certlc demo: {message}", file=sys.stderr)

    try:
        report = run_demo(state_dir, progress=progress, ca=ca)
    except CertlcError as exc:
        exit_with_error(exc.message, 1)
    if json_output:
        print(json.dumps({"ca": report["ca"], "certificates": report["certificates"], "agent": report["agent"],
                          "mail": report["mail"], "ok": report["ok"],
                          "second_sweep_renewed": report["second_sweep_renewed"], "logs": report["logs"]},
                         indent=2))
    else:
        _print_table(report)
    raise SystemExit(0 if report["ok"] else 1)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"certlc demo: vault 'demo' after Key Vault's clock moved {report['shift_days']} days ahead, "
                        f"renewed through {report['ca']}")
    table.add_column("certificate", no_wrap=True)
    for column in ("template", "key", "days left", "SANs kept", "expiry old → new", "thumbprint old → new", "outcome"):
        table.add_column(column, no_wrap=True)
    for row in report["certificates"]:
        old, new = row["old_not_after"][:10], row["new_not_after"][:10]
        expiry = f"{old} → {new}" if row["renewed"] else old
        thumb = f"{row['old_thumbprint'][:8]} → {row['new_thumbprint'][:8]}" if row["renewed"] else row["old_thumbprint"][:8]
        kept = ("yes" if row["sans_kept"] else "[red]NO[/red]") + f" ({len(row['sans'])})"
        if not row["due"]:
            outcome = "not due, untouched"
        elif row["renewed"] and row["seconds_after_shift"] is not None:
            outcome = f"renewed by event, {row['seconds_after_shift']:.0f} s"
        else:
            outcome = "[red]NOT renewed[/red]"
        table.add_row(row["name"], row["template"], row["key"], f"{row['days_left']:g}", kept, expiry, thumb, outcome)
    # Piped output defaults to 80 columns, which folds every cell; the table needs about 160.
    console = Console(width=max(Console().width, 170))
    console.print(table)
    console.print(f"sweep afterwards renewed: {', '.join(report['second_sweep_renewed']) or 'nothing'}")
    agent = report["agent"]
    console.print(f"certlc agent (host {agent['host']}, polling every {agent['interval_seconds']} s):")
    for row in agent["certificates"]:
        mark = "" if row["ok"] else " [red]PROBLEM[/red]"
        when = (f", installed {row['installed_after_merge_s']:.1f} s after the merge"
                if row["installed_after_merge_s"] is not None else "")
        console.print(f"  {row['name']}: vault {row['vault_version'][:8]}, installed "
                      f"{(row['installed_version'] or 'nothing')[:8]}, rollout state {(row['reported_version'] or 'none')[:8]}"
                      f"{when}{mark}")
    mail = report["mail"]
    told = [c for c in mail["certificates"] if c["renewed_mails"]]
    console.print(f"owners told by e-mail (the stack's SMTP sink got {mail['messages']} message(s)): "
                  + (", ".join(f"{c['name']} → {', '.join(c['owners'])}" for c in told) or "nobody")
                  + ("" if mail["ok"] else " [red]PROBLEM: a renewed certificate's owners got no or more than one "
                     "e-mail[/red]"))
    console.print(f"logs: {report['logs']}")
    console.print("[green]OK[/green]: every due certificate renewed once, nothing else touched"
                  if report["ok"] else "[red]FAILED[/red]: a promise did not hold; see the table and the logs")
