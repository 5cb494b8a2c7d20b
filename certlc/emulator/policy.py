"""Certificate policies: validate what a client sends and fill in the defaults the service echoes.

The stored policy is always normalised (azure-reference.md §2.3): ``key_props``,
``secret_props``, ``x509_props`` (with ``basic_constraints``), ``lifetime_actions``, ``issuer``
and ``attributes``. Unknown fields from newer API versions (``platformManaged``...) are dropped,
and nulls mean "not given".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from certlc.config import deep_merge
from certlc.emulator.errors import bad_parameter
from certlc.emulator.keys import CURVES, RSA_SIZES
from certlc.emulator.pki import PEM, PKCS12, build_sans, parse_subject
from certlc.x509.usage import KEY_USAGE_FIELDS

__all__ = [
    "ISSUER_SELF",
    "ISSUER_UNKNOWN",
    "SAN_KINDS",
    "drop_nulls",
    "merge_policy",
    "normalize_policy",
    "policy_for_import",
]

ISSUER_SELF = "Self"
ISSUER_UNKNOWN = "Unknown"
_ISSUERS = {"self": ISSUER_SELF, "unknown": ISSUER_UNKNOWN}
DEFAULT_EKUS = ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]
DEFAULT_KEY_USAGE = ["digitalSignature", "keyEncipherment"]
SAN_KINDS = ("dns_names", "emails", "upns", "ipAddresses", "uris")
_ACTIONS = {"emailcontacts": "EmailContacts", "autorenew": "AutoRenew"}
_KEY_TYPES = {"rsa": "RSA", "rsa-hsm": "RSA-HSM", "ec": "EC", "ec-hsm": "EC-HSM"}
_USAGES = {name.lower(): name for name in KEY_USAGE_FIELDS}
_OID = re.compile(r"[0-2](\.\d+)+")
NO_SUBJECT_OR_SAN = "You need to set either subject or one of the subject alternative names parameters in the policy"


def normalize_policy(raw: Any, *, require_identity: bool = True) -> dict[str, Any]:
    """A complete, validated policy from a (possibly partial) client policy."""
    policy = _section(drop_nulls(raw) if raw is not None else {}, "policy")
    issuer = _issuer(_section(policy.get("issuer", {}), "issuer"))
    x509_props = _x509_props(_section(policy.get("x509_props", {}), "x509_props"), require_identity)
    return {
        "key_props": _key_props(_section(policy.get("key_props", {}), "key_props")),
        "secret_props": _secret_props(_section(policy.get("secret_props", {}), "secret_props")),
        "x509_props": x509_props,
        "lifetime_actions": _lifetime_actions(
            policy.get("lifetime_actions"), issuer["name"], x509_props["validity_months"]
        ),
        "issuer": issuer,
        "attributes": {"enabled": _bool(_section(policy.get("attributes", {}), "attributes").get("enabled", True))},
    }


def merge_policy(current: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """PATCH semantics: members given replace the stored ones, the rest is kept."""
    return normalize_policy(deep_merge(current, _section(drop_nulls(patch), "policy")))


def policy_for_import(
    supplied: Any, current: Mapping[str, Any] | None, key_props: Mapping[str, Any], x509_props: Mapping[str, Any]
) -> dict[str, Any]:
    """The policy an import leaves: the supplied (or stored) one, with key and X.509 facts from the file."""
    base = _section(drop_nulls(supplied), "policy") if supplied is not None else dict(current or {})
    facts = {"key_props": dict(key_props), "x509_props": dict(x509_props)}
    return normalize_policy(deep_merge(base, facts), require_identity=False)


def drop_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    return value


# Sections ---------------------------------------------------------------------------------------------
def _issuer(raw: Mapping[str, Any]) -> dict[str, Any]:
    name = raw.get("name", ISSUER_UNKNOWN)
    canonical = _ISSUERS.get(str(name).lower())
    if canonical is None:
        raise bad_parameter(
            f"Issuer '{name}' is not configured in this key vault; the emulator supports the reserved issuers "
            "'Self' and 'Unknown'"
        )
    out: dict[str, Any] = {"name": canonical}
    if isinstance(raw.get("cty"), str):
        out["cty"] = raw["cty"]
    out["cert_transparency"] = _bool(raw.get("cert_transparency", False))
    return out


def _key_props(raw: Mapping[str, Any]) -> dict[str, Any]:
    kty = _KEY_TYPES.get(str(raw.get("kty", "RSA")).lower())
    if kty is None:
        raise bad_parameter(f"Unsupported key type '{raw.get('kty')}' for a certificate; use RSA, RSA-HSM, EC or EC-HSM")
    out: dict[str, Any] = {"exportable": _bool(raw.get("exportable", True)), "kty": kty}
    if kty.startswith("RSA"):
        size = raw.get("key_size", 2048)
        if size not in RSA_SIZES:
            raise bad_parameter(f"Unsupported RSA key size {size}; use one of {', '.join(map(str, RSA_SIZES))}")
        out["key_size"] = size
    else:
        crv = raw.get("crv", "P-256")
        if crv not in CURVES:
            raise bad_parameter(f"Unsupported curve '{crv}'; use one of {', '.join(CURVES)}")
        out["key_size"] = CURVES[crv].key_size
        out["crv"] = crv
    out["reuse_key"] = _bool(raw.get("reuse_key", False))
    return out


def _secret_props(raw: Mapping[str, Any]) -> dict[str, Any]:
    content_type = raw.get("contentType", PKCS12)
    if content_type not in (PKCS12, PEM):
        raise bad_parameter(f"Unsupported secret content type '{content_type}'; use {PKCS12} or {PEM}")
    return {"contentType": content_type}


def _x509_props(raw: Mapping[str, Any], require_identity: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    subject = raw.get("subject", "")
    if not isinstance(subject, str):
        raise bad_parameter("Property x509_props.subject must be a string")
    if subject.strip():
        parse_subject(subject)  # refuse now what could not be put in a CSR later
        out["subject"] = subject
    sans_raw = _section(raw.get("sans", {}), "x509_props.sans")
    sans = {kind: _strings(sans_raw[kind], f"sans.{kind}") for kind in SAN_KINDS if sans_raw.get(kind)}
    for ip in sans.get("ipAddresses", []):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise bad_parameter(f"Invalid IP address '{ip}' in sans.ipAddresses") from None
    build_sans(sans)
    if sans:
        out["sans"] = sans
    if require_identity and not out:
        raise bad_parameter(NO_SUBJECT_OR_SAN)
    ekus = _strings(raw.get("ekus", DEFAULT_EKUS), "ekus")
    bad = [e for e in ekus if not _OID.fullmatch(e)]
    if bad:
        raise bad_parameter(f"Invalid EKU OID(s) {bad}; use dotted OIDs such as 1.3.6.1.5.5.7.3.1")
    out["ekus"] = ekus
    usages = []
    for usage in _strings(raw.get("key_usage", DEFAULT_KEY_USAGE), "key_usage"):
        if usage.lower() not in _USAGES:
            raise bad_parameter(f"Invalid key usage '{usage}'; known: {', '.join(KEY_USAGE_FIELDS)}")
        usages.append(_USAGES[usage.lower()])
    out["key_usage"] = usages
    months = raw.get("validity_months", 12)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 1200:
        raise bad_parameter(f"Invalid validity_months {months!r}; use a whole number of months from 1 to 1200")
    out["validity_months"] = months
    out["basic_constraints"] = {"ca": False}  # echoed by the service although absent from the 7.5 swagger
    return out


def _lifetime_actions(raw: Any, issuer: str, validity_months: int) -> list[dict[str, Any]]:
    if raw is None:
        default = "EmailContacts" if issuer == ISSUER_UNKNOWN else "AutoRenew"
        return [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": default}}]
    if not isinstance(raw, list):
        raise bad_parameter("Property lifetime_actions must be an array")
    actions = []
    for item in raw:
        entry = _section(item, "lifetime_actions[]")
        trigger = _section(entry.get("trigger", {}), "trigger")
        action = _section(entry.get("action", {}), "action")
        kind = _ACTIONS.get(str(action.get("action_type", "")).lower())
        if kind is None:
            raise bad_parameter(f"Invalid action_type '{action.get('action_type')}'; use EmailContacts or AutoRenew")
        percentage, days = trigger.get("lifetime_percentage"), trigger.get("days_before_expiry")
        if (percentage is None) == (days is None):
            raise bad_parameter("A lifetime action trigger needs exactly one of lifetime_percentage and days_before_expiry")
        if percentage is not None and not (isinstance(percentage, int) and 1 <= percentage <= 99):
            raise bad_parameter(f"Invalid lifetime_percentage {percentage!r}; use 1 to 99")
        if days is not None and not (isinstance(days, int) and 1 <= days <= validity_months * 27):
            raise bad_parameter(f"Invalid days_before_expiry {days!r}; use 1 to {validity_months * 27}")
        key, value = ("lifetime_percentage", percentage) if percentage is not None else ("days_before_expiry", days)
        actions.append({"trigger": {key: value}, "action": {"action_type": kind}})
    return actions


# Helpers --------------------------------------------------------------------------------------------------
def _section(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise bad_parameter(f"Property {what} must be a JSON object")
    return dict(value)


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_parameter(f"Property {what} must be an array of strings")
    return list(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_parameter(f"Expected true or false, got {value!r}")
    return value
