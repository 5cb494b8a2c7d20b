"""Helpers shared by commands: settings loading with one-line errors, Prefect environment."""

from __future__ import annotations

import os
from pathlib import Path

from certlc.cli._app import exit_with_error
from certlc.config import Settings, load_settings
from certlc.errors import CertlcError


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)


def prepare_prefect_env(settings: Settings) -> None:
    """Point Prefect's result storage at certlc's state before Prefect is imported.

    Prefect reads its settings at import time, so this must run before any flow module loads.
    """
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(settings.results_path))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    settings.results_path.mkdir(parents=True, exist_ok=True)
    if settings_path := os.environ.get("CERTLC_CONFIG"):
        os.environ["CERTLC_CONFIG"] = str(Path(settings_path).resolve())
