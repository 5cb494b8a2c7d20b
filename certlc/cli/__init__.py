"""The ``certlc`` command line."""

from __future__ import annotations

from certlc.cli._app import app, exit_with_error

__all__ = ["app", "exit_with_error", "main"]


def main() -> None:
    app()
