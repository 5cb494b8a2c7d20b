"""``certlc ca check``: preflight a CA profile before a renewal depends on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError

__all__ = ["check"]

# How each template status reads in the human output (unverifiable is said, not counted as a problem).
_LABELS = {"ok": "OK", "unknown": "PROBLEM", "not-enrollable": "PROBLEM", "unverifiable": "NOT CHECKED"}


def _templates_of(item: Any, asked: list[str] | None) -> list[str]:
    """``--template`` values, else the profile's default template and template_map targets."""
    names = list(asked) if asked else [item.default_template or "", *item.template_map.values()]
    return list(dict.fromkeys(n.strip() for n in names if n and n.strip()))


def check(
    profile: Annotated[str | None, Parameter(help="CA profile to check (default: every profile).")] = None,
    *,
    template: Annotated[list[str] | None, Parameter(
        name="--template", help="Template to check (repeatable; default: the profile's default_template and "
                                "template_map targets).")] = None,
    config: Annotated[Path | None, Parameter(help="certlc configuration file (TOML); default $CERTLC_CONFIG.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check that a CA profile is usable: its connector builds from the configuration, the CA
    answers, it accepts certlc's credentials, and each template exists and may be enrolled on.
    Each problem is explained in plain words, with what to do.

    Exit 0: every checked profile is usable; 1: a CA or template has a problem; 2: bad configuration.
    """
    from certlc.ca import connector_for
    from certlc.config import load_settings

    try:
        settings = load_settings(config)
    except CertlcError as exc:
        exit_with_error(exc.message, 2)
    if not settings.ca_profiles:
        import os

        source = config or os.environ.get("CERTLC_CONFIG")
        where = f"configuration {source}" if source else "the configuration (no --config given, $CERTLC_CONFIG unset)"
        exit_with_error(f"{where} defines no CA profiles ([ca_profiles.<name>] with its kind): nothing to check", 2)
    names = [profile] if profile else sorted(settings.ca_profiles)
    results = []
    for name in names:
        try:
            connector = connector_for(name, settings)
        except CertlcError as exc:
            exit_with_error(exc.message, 2)
        item = settings.ca_profiles[name]
        try:
            health = connector.check()
            problems = list(health.problems) if not health.ok else []
            if not health.ok and not problems:
                problems = ["the CA reported a problem without details"]
        except CertlcError as exc:  # unreachable, refused credentials: the connector says which
            problems = [exc.message]
        templates = _templates_of(item, template)
        checks: list[dict[str, str]] = []
        skipped = ""
        check_templates = getattr(connector, "check_templates", None)
        if not getattr(connector, "uses_templates", True):  # ACME: the order, not a template, decides
            templates = list(template or [])
            skipped = f"the {item.kind} CA issues without templates" if templates else ""
        elif not templates:
            skipped = "no template named (give --template, or set the profile's default_template or template_map)"
        elif problems:  # said once here, not once per template
            skipped = "skipped until the CA problem above is fixed"
        elif check_templates is None:
            skipped = f"the {item.kind} connector cannot list templates, so they could not be checked"
        else:
            try:
                checks = [c.to_dict() for c in check_templates(templates)]
            except CertlcError as exc:
                problems.append(f"templates could not be checked: {exc.message}")
                skipped = "the CA could not be asked about them"
        bad = [c for c in checks if c["status"] in ("unknown", "not-enrollable")]
        results.append({"profile": name, "kind": item.kind, "endpoint": item.endpoint,
                         "ok": not problems and not bad, "problems": problems,
                         "template_map": item.template_map, "templates": checks,
                         "templates_skipped": {"templates": templates, "reason": skipped} if skipped else None})
    if json_output:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            _print(result)
    raise SystemExit(0 if all(r["ok"] for r in results) else 1)


def _print(result: dict[str, Any]) -> None:
    where = f" at {result['endpoint']}" if result["endpoint"] else ""
    print(f"{result['profile']} ({result['kind']}{where}): {'OK' if result['ok'] else 'PROBLEM'}")
    for problem in result["problems"]:
        print(f"  - {problem}")
    for item in result["templates"]:
        label = _LABELS.get(item["status"], item["status"])
        mapped = f" -> {item['ca_name']}" if item["ca_name"] != item["template"] else ""
        detail = f" — {item['detail']}" if label != "OK" and item["detail"] else ""
        print(f"  template {item['template']}{mapped}: {label}{detail}")
        if item["action"] and label != "OK":
            print(f"    what to do: {item['action']}")
    if skipped := result["templates_skipped"]:
        listed = f" ({', '.join(skipped['templates'])})" if skipped["templates"] else ""
        print(f"  templates not checked{listed}: {skipped['reason']}")
