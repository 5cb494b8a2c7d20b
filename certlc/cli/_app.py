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
app.command("certlc.cli.inspect:inspect", name="inspect")
app.command("certlc.cli.emulator:emulator", name="emulator")
app.command("certlc.cli.renew:renew", name="renew")
app.command("certlc.cli.renew:sweep", name="sweep")
app.command("certlc.cli.demo:demo", name="demo")


def exit_with_error(message: str, code: int = 1) -> NoReturn:
    """Print one line naming the problem on stderr and exit non-zero."""
    print(f"certlc: error: {message}", file=sys.stderr)
    raise SystemExit(code)
