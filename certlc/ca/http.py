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
from urllib.parse import urlsplit

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
    if not endpoint:
        raise ConfigError(f"CA profile {name!r} ({kind}) needs endpoint = {what}", reason="CaProfileInvalid")
    problem = _url_problem(endpoint)
    if problem:
        raise ConfigError(f"CA profile {name!r} ({kind}): endpoint {endpoint!r} {problem}; it needs to be {what}",
                          reason="CaProfileInvalid")
    return endpoint


def _url_problem(endpoint: str) -> str:
    """What keeps ``endpoint`` from being an http(s) URL certlc can call, in words; "" if nothing."""
    scheme, sep, _ = endpoint.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "is not a URL (it does not start with https:// or http://)"
    if scheme.lower() not in ("http", "https"):
        return f"uses {scheme}://, and certlc calls CAs over https:// or http:// only"
    if _CONTROL.search(endpoint) or " " in endpoint:
        return "holds spaces or control characters"
    try:
        parts = urlsplit(endpoint)
        _ = parts.port  # raises for a port that is no number or out of range
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    if not parts.hostname:
        return "names no host"
    return ""


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


# What OpenSSL says when the other end of an https:// URL answers in plain HTTP (its
# "HTTP/1.1 400" read as a TLS record): by OpenSSL version, wrong version number, unknown
# protocol, packet length too long or record layer failure.
_PLAIN_HTTP_ANSWER = ("wrong_version_number", "wrong version number", "unknown_protocol", "unknown protocol",
                      "packet_length_too_long", "packet length too long", "record_layer_failure",
                      "record layer failure")
_PLAIN_HTTP_HINT = "the server answers plain HTTP: use http:// or the HTTPS port"
_HTTPS_HINT = "the server may expect HTTPS: use https://"


def _scheme_hint(exc: httpx.HTTPError) -> str:
    """A hint when the failure looks like the endpoint's scheme does not match what the server speaks."""
    try:
        scheme = exc.request.url.scheme
    except RuntimeError:  # an error raised without its request
        return ""
    text = str(exc).lower()
    if scheme == "https" and isinstance(exc, httpx.ConnectError) and any(s in text for s in _PLAIN_HTTP_ANSWER):
        return _PLAIN_HTTP_HINT
    # A TLS listener that reads a plain HTTP request drops the connection without a word
    # (uvicorn does) or resets it (Python's ssl server does); other causes look the same, hence "may".
    if scheme == "http" and (
            (isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in text)
            or (isinstance(exc, httpx.ReadError) and "reset by peer" in text)):
        return _HTTPS_HINT
    return ""


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
        hint = _scheme_hint(exc)
        raise TransientError(f"{what} cannot be reached: {first_line(exc)}{f' ({hint})' if hint else ''}",
                             reason="CAUnavailable", **context) from None


def check_status(what: str, status: int, **context: Any) -> None:
    """A 5xx, 408 or 429 answer is an outage: try again later."""
    if status >= 500 or status in RETRYABLE_STATUS:
        raise TransientError(f"{what} answered HTTP {status}", reason="CAUnavailable", **context)
