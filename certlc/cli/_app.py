"""The root of the ``certlc`` command and the one way a command fails."""

from __future__ import annotations

import sys
from typing import NoReturn

from cyclopts import App

app = App(
    name="certlc",
    help="Renew Azure Key Vault certificates issued by CAs Key Vault cannot renew itself.",
    version_flags=["--version"],
)

# One module per command group; imported only when that command runs (heavy imports stay lazy).
app.command("certlc.cli.renew:sweep", name="sweep",
            help="Find every certificate due for renewal in the configured vaults and renew each.")
app.command("certlc.cli.renew:renew", name="renew", help="Renew one certificate now, through its CA.")
app.command("certlc.cli.inspect:inspect", name="inspect",
            help="Show what a certificate, chain, CSR or PFX file holds (any PEM/DER/PKCS#7/PFX form).")
app.command("certlc.cli.emulator:emulator", name="emulator",
            help="Run the local Key Vault emulator (HTTPS on loopback) and its managed-identity endpoint.")
app.command("certlc.cli.webhook:webhook", name="webhook",
            help="Receive Key Vault events from Event Grid (webhook) and start their renewals.")
app.command("certlc.cli.up:up", name="up",
            help="Start the whole local stack: emulator with events, Azurite, Prefect server and worker, webhook, SMTP.")
app.command("certlc.cli.up:down", name="down", help="Stop the local stack started with `certlc up --detach`.")
app.command("certlc.cli.up:ps", name="ps", help="Show the local stack's parts: running, healthy, logs.")
app.command("certlc.cli.emulator:emulator_clock", name="emulator-clock",
            help="Show or shift a running emulator's clock (certificates reach Event Grid's expiry windows).")
ca = App(name="ca", help="CA profiles: preflight checks.")
ca.command("certlc.cli.ca:check", name="check", help="Check that a CA profile is usable (reachable, authenticated, templates exist and may be enrolled).")
app.command(ca)
app.command("certlc.cli.agent:agent", name="agent", help="Install certificates from Key Vault on this server (the Key Vault VM extension's job): poll, install, link.")
app.command("certlc.cli.status:status", name="status",
            help="Every certificate in the configured vaults: expiry, status, last renewal, rollout (--json for scripts).")
app.command("certlc.cli.demo:demo", name="demo",
            help="Seed a local Key Vault with expiring certificates and renew them through Prefect.")


def exit_with_error(message: str, code: int = 1) -> NoReturn:
    """Print one line naming the problem on stderr and exit non-zero."""
    print(f"certlc: error: {message}", file=sys.stderr)
    raise SystemExit(code)
