"""What every HTTP CA connector (cfssl, AD CS web enrollment) needs the same way: its profile's
common options read with plain-word errors, the template resolved, and transport failures mapped
onto certlc's errors (an outage is transient, an untrusted certificate is configuration)."""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from certlc.ca.base import tls_verify_failure
from certlc.errors import ConfigError, InvalidInput, TerminalError, TransientError, first_line

__all__ = [
    "RETRYABLE_STATUS",
    "check_options",
    "check_status",
    "http_endpoint",
    "resolve_template",
    "timeout_option",
    "transport_errors",
    "trust_context",
]

RETRYABLE_STATUS = {408, 429}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_options(name: str, kind: str, options: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"CA profile {name!r} ({kind}) has unknown option(s) {unknown} (known: {sorted(known)})",
                          reason="CaProfileInvalid")


def http_endpoint(name: str, kind: str, endpoint: str | None, what: str) -> str:
    """The profile's endpoint, which must be an http(s) URL; ``what`` describes it with an example."""
    if not endpoint or not endpoint.startswith(("https://", "http://")):
        raise ConfigError(f"CA profile {name!r} ({kind}) needs endpoint = {what}", reason="CaProfileInvalid")
    return endpoint


def timeout_option(name: str, options: dict[str, Any], default: float) -> float:
    try:
        timeout = float(options.get("timeout_seconds", default))
    except (TypeError, ValueError):
        timeout = -1.0
    if timeout <= 0:
        raise ConfigError(f"CA profile {name!r}: timeout_seconds must be a positive number", reason="CaProfileInvalid")
    return timeout


def trust_context(name: str, ca_bundle: object) -> ssl.SSLContext | None:
    """An SSL context trusting ``ca_bundle``; None when the profile names none."""
    if not ca_bundle:
        return None
    try:
        return ssl.create_default_context(cafile=str(Path(str(ca_bundle)).expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"CA profile {name!r}: ca_bundle {str(ca_bundle)!r} cannot be read as PEM: {first_line(exc)}",
                          reason="CaProfileInvalid") from None


def resolve_template(requested: str, default_template: str | None, template_map: dict[str, str],
                     profile: str) -> str:
    """The template the CA expects: the request's (or the profile's default), through the map."""
    name = (requested or "").strip() or (default_template or "")
    if not name:
        raise InvalidInput("the request names no certificate template and the profile has no default",
                           reason="TemplateMissing", profile=profile)
    name = template_map.get(name, name)
    if _CONTROL.search(name):
        raise InvalidInput(f"template name {name!r} holds a control character", reason="TemplateInvalid",
                           profile=profile)
    return name


@contextlib.contextmanager
def transport_errors(what: str, **context: Any) -> Iterator[None]:
    """httpx failures as certlc errors; ``what`` names the CA ("cfssl at https://...")."""
    try:
        yield
    except httpx.TimeoutException:
        raise TransientError(f"{what} did not answer in time", reason="CAUnavailable", **context) from None
    except httpx.HTTPError as exc:
        untrusted = tls_verify_failure(exc)
        if untrusted:  # configuration: retrying cannot make the certificate trusted
            raise TerminalError(f"the TLS certificate of {what} is not trusted ({untrusted}); set the CA "
                                "profile's ca_bundle to the CA that issued it", reason="CaTlsUntrusted",
                                **context) from None
        raise TransientError(f"{what} cannot be reached: {first_line(exc)}", reason="CAUnavailable",
                             **context) from None


def check_status(what: str, status: int, **context: Any) -> None:
    """A 5xx, 408 or 429 answer is an outage: try again later."""
    if status >= 500 or status in RETRYABLE_STATUS:
        raise TransientError(f"{what} answered HTTP {status}", reason="CAUnavailable", **context)
