"""``certlc ca check``: preflight a CA profile before a renewal depends on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError

__all__ = ["check"]


def check(
    profile: Annotated[str | None, Parameter(help="CA profile to check (default: every profile).")] = None,
    *,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check that a CA profile is usable: its connector builds from the configuration, the CA
    answers, and it accepts certlc's credentials. Each problem is explained in plain words.

    Exit 0: every checked profile is usable; 1: a CA has a problem; 2: bad configuration.
    """
    from certlc.ca import connector_for
    from certlc.config import load_settings

    try:
        settings = load_settings(config)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    names = [profile] if profile else sorted(settings.ca_profiles)
    results = []
    for name in names:
        try:
            connector = connector_for(name, settings)
        except CertlcError as exc:
            exit_with_error(exc.message, 2)
        try:
            health = connector.check()
            problems = list(health.problems) if not health.ok else []
            if not health.ok and not problems:
                problems = ["the CA reported a problem without details"]
        except CertlcError as exc:  # unreachable, refused credentials: the connector says which
            problems = [exc.message]
        item = settings.ca_profiles[name]
        results.append({"profile": name, "kind": item.kind, "endpoint": item.endpoint, "ok": not problems,
                        "problems": problems, "template_map": item.template_map})
    if json_output:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            where = f" at {result['endpoint']}" if result["endpoint"] else ""
            state = "OK" if result["ok"] else "PROBLEM"
            print(f"{result['profile']} ({result['kind']}{where}): {state}")
            for problem in result["problems"]:
                print(f"  - {problem}")
    raise SystemExit(0 if all(r["ok"] for r in results) else 1)
