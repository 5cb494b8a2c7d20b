"""The ``certlc`` command line."""

from __future__ import annotations

import os

from certlc.cli._app import app, exit_with_error

__all__ = ["app", "exit_with_error", "main"]


def main() -> None:
    # Everything certlc writes (results, state, logs) is for this account only.
    os.umask(0o077)
    app()
