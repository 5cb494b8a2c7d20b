"""The renewal's domain logic between the steps: which template, what to ask the CA, the outcome.

Plain functions over plain data; the Prefect tasks in ``tasks/`` call these and add retry,
caching and logging around them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from certlc.ca.base import SigningRequest
from certlc.config import CAProfile, Settings, VaultSettings
from certlc.errors import InvalidInput
from certlc.policy import is_due
from certlc.vault import CertificateSnapshot, PendingCsr, parse_iso

__all__ = ["Outcome", "Trigger", "ca_profile_name", "choose_ca", "due_status", "request_key", "resolve_template",
           "signing_request"]

# Key Vault's own verdict that a version needs renewing.
_RENEWING_EVENTS = {"Microsoft.KeyVault.CertificateNearExpiry": "KeyVaultNearExpiry",
                    "Microsoft.KeyVault.CertificateExpired": "KeyVaultExpired"}


@dataclass(frozen=True)
class Trigger:
    """The Key Vault event that started a renewal (a sweep or a person starts one without).

    Key Vault's near-expiry event is its verdict on one version; certlc acts on it when that
    version is still the current one and the event's expiry is the certificate's, even if
    certlc's own window (which may differ, or whose clock may be behind the vault's) does not
    say due yet. An event about an older version means the renewal already happened.
    """

    event_id: str
    event_type: str
    version: str
    expires: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Trigger:
        if not isinstance(data, dict):
            raise InvalidInput("event must be an object with event_id, event_type, version", reason="EventInvalid")
        unknown = set(data) - {"event_id", "event_type", "version", "expires"}
        if unknown:
            raise InvalidInput(f"event has unknown field(s) {sorted(unknown)}", reason="EventInvalid")
        try:
            trigger = cls(**data)
        except TypeError:
            raise InvalidInput("event needs event_id, event_type and version", reason="EventInvalid") from None
        for name in ("event_id", "event_type", "version"):
            value = getattr(trigger, name)
            if not isinstance(value, str) or not value or len(value) > 200:
                raise InvalidInput(f"event {name} must be a non-empty string", reason="EventInvalid")
        if trigger.expires is not None:
            try:
                parse_iso(trigger.expires)
            except (TypeError, ValueError):
                raise InvalidInput(f"event expires {trigger.expires!r} is not an ISO time", reason="EventInvalid") from None
        return trigger


def _vouched_by(trigger: Trigger | None, snapshot: CertificateSnapshot) -> str | None:
    """The reason Key Vault's event makes ``snapshot`` due, or None."""
    if trigger is None or trigger.event_type not in _RENEWING_EVENTS:
        return None
    if trigger.version.lower() != (snapshot.version or "").lower():
        return None
    expires, not_after = parse_iso(trigger.expires), parse_iso(snapshot.not_after)
    if expires is not None and (not_after is None or abs((expires - not_after).total_seconds()) > 1):
        return None  # not the certificate the vault holds under that version
    return _RENEWING_EVENTS[trigger.event_type]


def ca_profile_name(snapshot: CertificateSnapshot, vault: VaultSettings, settings: Settings) -> str:
    """The CA profile that renews ``snapshot``: its ``CaProfile`` tag, else its vault's.

    The tag lets one vault hold certificates from several CAs (an AD CS estate moving to ACME,
    say). A tag naming no configured profile is refused for that certificate alone.
    """
    tagged = (snapshot.tag(settings.renewal.ca_profile_tag) or "").strip()
    if not tagged:
        return vault.ca_profile
    if tagged not in settings.ca_profiles:
        raise InvalidInput(
            f"certificate {snapshot.name!r} in vault {snapshot.vault!r} has tag "
            f"{settings.renewal.ca_profile_tag}={tagged!r}, which is not a configured CA profile "
            f"(configured: {', '.join(sorted(settings.ca_profiles))})",
            reason="CaProfileMissing", vault=snapshot.vault, certificate=snapshot.name,
        )
    try:
        settings.refuse_devca_for(vault, tagged)
    except ValueError as exc:
        raise InvalidInput(f"certificate {snapshot.name!r}: tag {settings.renewal.ca_profile_tag}={tagged!r}: {exc}",
                           reason="CaProfileInvalid", vault=snapshot.vault, certificate=snapshot.name) from None
    return tagged


def resolve_template(snapshot: CertificateSnapshot, profile: CAProfile, settings: Settings,
                     *, required: bool = True) -> str:
    """The template name (or OID) the CA expects for renewing ``snapshot``.

    Order: the ``RenewWithTemplate`` tag (an explicit per-certificate override, e.g. a template
    migration), the certificate's own template extension (v1 name passes through; a v2 OID is
    mapped to the template's common name through the profile's ``template_map``, else sent as
    the OID, which AD CS accepts too), then the ``Template`` tag, then the profile's default.
    A certificate that names no template is refused: guessing one would issue the wrong thing —
    unless the CA has no templates (``required=False``, e.g. ACME), where it is "".
    """
    override = (snapshot.tag(settings.renewal.template_override_tag) or "").strip()
    if override:  # an operator's explicit choice for this certificate, e.g. moving it to a new template
        return profile.template_map.get(override, override)
    template = snapshot.template or {}
    if template.get("name"):
        return str(template["name"])
    if template.get("oid"):
        oid = str(template["oid"])
        return profile.template_map.get(oid, oid)
    tagged = snapshot.tag(settings.renewal.template_tag)
    if tagged and tagged.strip():
        value = tagged.strip()
        return profile.template_map.get(value, value)
    if profile.default_template:
        return profile.default_template
    if not required:
        return ""
    raise InvalidInput(
        f"certificate {snapshot.name!r} in vault {snapshot.vault!r} has no template extension and no "
        f"{settings.renewal.template_tag!r} tag, so certlc cannot tell which template to renew it with; "
        f"add the tag (e.g. {settings.renewal.template_tag}=WebServer)",
        reason="TemplateMissing", vault=snapshot.vault, certificate=snapshot.name,
    )


def choose_ca(snapshot: CertificateSnapshot, vault: VaultSettings, settings: Settings) -> tuple[str, str]:
    """The CA profile and the template to renew ``snapshot`` with; refuses what cannot be renewed
    (unknown profile or kind, no template for a CA that needs one) before anything is written."""
    from certlc.ca.registry import connector_for  # the registry imports config; keep renewal light

    profile = ca_profile_name(snapshot, vault, settings)
    connector = connector_for(profile, settings)
    uses_templates = bool(getattr(connector, "uses_templates", True))
    return profile, resolve_template(snapshot, settings.ca_profiles[profile], settings, required=uses_templates)


def request_key(snapshot: CertificateSnapshot, pending: PendingCsr) -> str:
    """Deterministic identity of one CA submission: vault, certificate, version, KV request."""
    return f"{snapshot.vault}/{snapshot.name}/{snapshot.version}/{pending.request_id}"


def signing_request(snapshot: CertificateSnapshot, pending: PendingCsr, template: str) -> SigningRequest:
    return SigningRequest(
        csr_pem=pending.csr_pem,
        template=template,
        request_key=request_key(snapshot, pending),
        vault=snapshot.vault,
        certificate=snapshot.name,
    )


def due_status(snapshot: CertificateSnapshot, settings: Settings, now: dt.datetime | None = None,
               trigger: Trigger | None = None) -> tuple[bool, str]:
    """Whether ``snapshot`` is due, and why: certlc's window, or Key Vault's event for this version."""
    due = is_due(parse_iso(snapshot.not_before), parse_iso(snapshot.not_after), settings.renewal,
                 now=now, tags=snapshot.tags, enabled=snapshot.enabled)
    if due.due or not snapshot.enabled:
        return due.due, due.reason
    vouched = _vouched_by(trigger, snapshot)
    return (True, vouched) if vouched else (due.due, due.reason)


@dataclass
class Outcome:
    """What happened to one certificate: stable ``outcome`` + ``reason`` and a human message. JSON-able."""

    vault: str
    name: str
    outcome: str  # Renewed | AlreadyRenewed | Pending | Denied | Failed | NotDue | Skipped
    reason: str
    message: str = ""
    old_version: str | None = None
    new_version: str | None = None
    old_thumbprint: str | None = None
    new_thumbprint: str | None = None
    old_not_after: str | None = None
    new_not_after: str | None = None
    template: str | None = None
    ca_request_id: str | None = None
    kv_request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)
