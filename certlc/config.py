"""One settings tree for certlc: a TOML file, then ``CERTLC_*`` environment variables.

Precedence (highest first): values passed in code, environment variables
(``CERTLC_RENEWAL__CONCURRENCY=8``; nested groups joined by ``__``), the TOML file named by
``--config`` or ``CERTLC_CONFIG``, then the defaults below. Every field has a default and a
description; nothing secret is stored here in clear (secrets are ``SecretStr``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from certlc.errors import ConfigError
from certlc.x509.usage import KEY_USAGE_FIELDS as _KEY_USAGE_FIELDS

__all__ = [
    "CLIENT_AUTH",
    "EVENT_TYPES",
    "KEY_USAGES",
    "SERVER_AUTH",
    "AzureSettings",
    "CAProfile",
    "DevCASettings",
    "EmulatorSettings",
    "EntraSettings",
    "EventSubscriptionSettings",
    "InventorySettings",
    "NotificationSettings",
    "QueueSettings",
    "RenewalSettings",
    "Settings",
    "SmtpSettings",
    "TemplateSpec",
    "VaultSettings",
    "WebhookSettings",
    "deep_merge",
    "is_loopback_url",
    "load_settings",
]

SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"

KEY_USAGES = tuple(_KEY_USAGE_FIELDS)


def is_loopback_url(url: str) -> bool:
    """True when ``url`` points at this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Model(BaseModel):
    model_config = {"extra": "forbid"}


class TemplateSpec(_Model):
    """A certificate template, described the way AD CS describes one."""

    name: str = Field(description="The template's common name (cn), e.g. 'WebServer'; never a display name.")
    oid: str | None = Field(
        default=None,
        description="msPKI-Cert-Template-OID for a v2+ template; absent for a v1 template.",
    )
    major: int | None = Field(default=None, description="Template major version (revision), v2+ only.")
    minor: int | None = Field(default=None, description="Template minor version, v2+ only; may be absent.")
    validity_days: int = Field(default=365, gt=0, description="Lifetime of certificates issued with it.")
    ekus: list[str] = Field(default=[SERVER_AUTH, CLIENT_AUTH], description="Extended key usage OIDs.")
    key_usages: list[str] = Field(
        default=["digitalSignature", "keyEncipherment"], description="Key usage names as Key Vault spells them."
    )
    approval: Literal["auto", "manager", "deny"] = Field(
        default="auto",
        description="auto: issue at once; manager: hold for CA manager approval (pending); deny: refuse.",
    )

    @field_validator("oid")
    @classmethod
    def _oid_shape(cls, value: str | None) -> str | None:
        if value is not None and not all(part.isdigit() for part in value.split(".")):
            raise ValueError(f"template OID {value!r} is not a dotted OID")
        return value

    @field_validator("key_usages")
    @classmethod
    def _known_usages(cls, value: list[str]) -> list[str]:
        unknown = [u for u in value if u not in KEY_USAGES]
        if unknown:
            raise ValueError(f"unknown key usage(s) {unknown}; known: {', '.join(KEY_USAGES)}")
        return value

    @property
    def schema_version(self) -> int:
        """1 for a v1 template (named in extension 20.2), 2 for v2+ (OID in extension 21.7)."""
        return 1 if self.oid is None else 2


class DevCASettings(_Model):
    """The local development CA: a root and an issuing CA with AD CS-style templates."""

    state_dir: Path | None = Field(default=None, description="Where the CA keeps its keys; default <state_dir>/devca.")
    common_name: str = Field(default="certlc Dev Issuing CA", description="Issuing CA subject CN.")
    allow_real_vaults: bool = Field(
        default=False, description="Let a devca profile renew certificates of a vault that is not on loopback.")
    templates: list[TemplateSpec] = Field(
        default_factory=lambda: [
            TemplateSpec(name="WebServer", validity_days=730, ekus=[SERVER_AUTH]),
            TemplateSpec(
                name="WebServerShort",
                oid="1.3.6.1.4.1.311.21.8.7638725.13898300.1985460.3383425.7519116.119.16408497.1716615",
                major=100,
                minor=4,
                validity_days=90,
            ),
        ],
        description="Templates the dev CA can issue.",
    )


class CAProfile(_Model):
    """How to reach one CA and how its templates are named."""

    # Required: a forgotten kind must not quietly become the dev CA (a self-made key signing
    # production certificates).
    kind: str = Field(description="Connector kind: adcs-web, certreq, acme, cfssl, or devca (local stack only).")
    endpoint: str | None = Field(default=None, description="The CA's URL or config string, where it has one.")
    template_map: dict[str, str] = Field(
        default_factory=dict,
        description="v2 template OID -> the template common name this CA expects. v1 names pass through.",
    )
    default_template: str | None = Field(
        default=None, description="Template to use when a certificate names none (normally unset: refuse)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Connector-specific settings.")


class VaultSettings(_Model):
    """One Key Vault certlc manages."""

    name: str = Field(description="Short name used on the command line and in flows.")
    url: str = Field(description="Vault URL, e.g. https://myvault.vault.azure.net")
    ca_profile: str = Field(default="default", description="CA profile used for this vault's certificates.")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"vault url {value!r} must be an https:// URL (Key Vault refuses plain http)")
        return value.rstrip("/")


class AzureSettings(_Model):
    """How every Azure SDK client is built (see certlc.clients)."""

    ca_bundle: Path | None = Field(default=None, description="PEM bundle to trust for the vault's TLS.")
    managed_identity_client_id: str | None = Field(
        default=None, description="Client id of a user-assigned managed identity (the worker's principal)."
    )
    verify_challenge_resource: bool | None = Field(
        default=None, description="Check the auth challenge's resource against the vault host; default: on, off only for loopback."
    )


class RenewalSettings(_Model):
    """When a certificate is due and how renewals run (DESIGN §5)."""

    renew_before_days: float = Field(default=30, gt=0, description="Renew when less than this many days are left...")
    renew_before_fraction: float = Field(
        default=1 / 3, gt=0, lt=1, description="...or less than this fraction of the lifetime, whichever is smaller."
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Renewals run at once by a sweep.")
    template_tag: str = Field(default="Template", description="Tag naming the template when the certificate has no template extension.")
    recipient_tag: str = Field(default="Recipient", description="Tag listing owners to notify.")
    template_override_tag: str = Field(
        default="RenewWithTemplate",
        description="Tag naming the template to renew one certificate with even though it carries another "
                    "(a template migration); wins over the certificate's own template extension.")
    ca_profile_tag: str = Field(
        default="CaProfile", description="Tag naming the CA profile for one certificate, instead of its vault's.")
    denied_retry_hours: float = Field(
        default=24, gt=0, le=24 * 30,
        description="After a CA denial, how long before the same version/template/CA is submitted again "
                    "(owners are told once per attempt, not on every sweep or event).")
    renew_before_tag: str = Field(default="RenewBeforeDays", description="Tag overriding renew_before_days for one certificate.")
    skew_seconds: int = Field(default=600, ge=0, description="Tolerated clock skew for a not-yet-valid certificate.")
    lock_lease_seconds: int = Field(
        default=60, ge=60, le=3600,  # Prefect refuses leases under 60 s
        description="Lease of the per-certificate renewal lock; a crashed renewal frees it after this long.",
    )


class SmtpSettings(_Model):
    """Where owner notifications are sent by e-mail."""

    host: str = Field(description="SMTP server (the relay the organisation's mail goes through).")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="Default 587 with starttls, 465 with tls, 25 with none.")
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="starttls (upgrade on 587), tls (implicit TLS, 465) or none (loopback only).")
    username: str | None = Field(default=None, description="Log in with this user (AUTH) after TLS.")
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    password_file: Path | None = Field(default=None, description="File whose first line is the password.")
    sender: str = Field(description="From: address, e.g. certlc@contoso.com.")
    ca_bundle: Path | None = Field(default=None, description="PEM roots trusted for the server's certificate.")
    timeout: float = Field(default=30, gt=0, le=300, description="Seconds to connect and for each command.")

    @field_validator("sender")
    @classmethod
    def _address(cls, value: str) -> str:
        if value.count("@") != 1 or any(c.isspace() or c in ",;<>" for c in value) or "." not in value.split("@")[1]:
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SmtpSettings:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        if self.security == "none" and not is_loopback_url(f"smtp://{self.host}"):
            raise ValueError(f"security = \"none\" sends mail (and any password) in clear text; it is allowed "
                             f"only for a server on this machine, not {self.host!r}: use starttls or tls")
        return self

    @property
    def resolved_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]


class NotificationSettings(_Model):
    """Telling certificate owners (the Recipient tag) what happened to their certificates."""

    smtp: SmtpSettings | None = Field(default=None, description="E-mail; without it messages only go to the run log.")
    apprise_urls: list[SecretStr] = Field(
        default_factory=list,
        description="Other channels as Apprise URLs (msteams://..., slack://...); each gets every notice. "
                    "They hold tokens: keep them in the environment (CERTLC_NOTIFICATIONS__APPRISE_URLS).")
    repeat_after_hours: float = Field(
        default=24, ge=0, le=24 * 30,
        description="The same notice (certificate, event, reason) is not sent again within this many hours.")
    ui_url: str | None = Field(default=None, description="Prefect UI address for links to runs; default PREFECT_UI_URL.")


class InventorySettings(_Model):
    """The estate's inventory: statuses, the history store (certlc status, dashboard, metrics)."""

    threshold_days: float = Field(default=30, gt=0, le=3650,
                                  description="Fewer days left than this is 'ExpiringSoon' (yellow).")
    history_path: Path | None = Field(default=None, description="The SQLite history store; default "
                                                                "<state_dir>/history.sqlite.")


class QueueSettings(_Model):
    """The storage queue Event Grid writes near-expiry events to (Azure Storage or Azurite)."""

    connection_string: SecretStr | None = Field(
        default=None, description="Storage connection string (Azurite locally); else account_url + credential.")
    account_url: str | None = Field(default=None, description="https://<account>.queue.core.windows.net")
    name: str = Field(default="certlc", description="Queue Event Grid writes to.")
    dead_letter_name: str = Field(default="certlc-poison", description="Where messages go after max_dequeues.")
    visibility_timeout_seconds: int = Field(
        default=1800, ge=30, le=7 * 24 * 3600,
        description="How long a received message stays hidden: longer than a renewal takes.")
    max_dequeues: int = Field(default=5, ge=1, le=100, description="Receives before a message is dead-lettered.")
    api_version: str | None = Field(
        default=None, description="Storage API version to speak (Azurite 3.35 knows up to 2025-11-05).")


class EntraSettings(_Model):
    """Entra ID bearer tokens on Event Grid deliveries (secure webhook delivery)."""

    tenant_id: str = Field(description="Directory (tenant) id the tokens are issued by.")
    audience: str = Field(description="The webhook app's application id or id URI: the tokens' 'aud'.")
    issuers: list[str] | None = Field(
        default=None,
        description="Accepted 'iss' values; default: the tenant's v1 and v2 issuers "
        "(https://sts.windows.net/<tenant>/ and https://login.microsoftonline.com/<tenant>/v2.0).",
    )
    jwks_url: str | None = Field(
        default=None, description="Signing keys; default https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys.")
    required_role: str | None = Field(
        default="AzureEventGridSecureWebhookSubscriber",
        description="App role the caller must hold ('roles' claim); empty to accept any authenticated caller.",
    )
    leeway_seconds: int = Field(default=60, ge=0, le=600, description="Tolerated clock skew on exp/nbf.")

    @property
    def accepted_issuers(self) -> list[str]:
        return self.issuers or [f"https://sts.windows.net/{self.tenant_id}/",
                                f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"]

    @property
    def keys_url(self) -> str:
        return self.jwks_url or f"https://login.microsoftonline.com/{self.tenant_id}/discovery/v2.0/keys"


class WebhookSettings(_Model):
    """The Event Grid receiver (certlc webhook)."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, description="Port to listen on.")
    shared_key: SecretStr | None = Field(
        default=None,
        description="Key every delivery must carry (query parameter 'key' or header 'X-Certlc-Key'); "
        "put it in the Event Grid subscription's endpoint URL.",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=8 * 1024 * 1024,
                                description="Largest delivery accepted (Event Grid sends at most 1 MB).")
    allowed_origins: list[str] = Field(
        default=["eventgrid.azure.net"],
        description="CloudEvents handshake: sender origins (WebHook-Request-Origin) to consent to; '*' for any.",
    )
    entra: EntraSettings | None = Field(
        default=None, description="Also require an Entra ID bearer token on every delivery (issuer, audience, JWKS).")
    deployment: str = Field(
        default="renew-certificate/renew-certificate",
        description="Prefect deployment started for each accepted event (flow name/deployment name).")
    enqueue: bool = Field(
        default=True, description="Also put each accepted event on the storage queue, so the drain retries it.")
    max_concurrent_starts: int = Field(
        default=4, ge=1, le=64,
        description="Flow runs being created at once (a Prefect server on SQLite refuses concurrent writes).")
    rollout_key: SecretStr | None = Field(
        default=None,
        description="Key the agents send with their rollout reports (POST /api/rollout); unset: reports are refused. "
        "A key of its own, so a server's agent cannot start renewals.")
    rollout_dir: Path | None = Field(default=None, description="Where rollout reports are kept; default <state_dir>/rollout.")
    tls_certificate: Path | None = Field(default=None, description="PEM certificate to serve HTTPS with (Event Grid needs HTTPS).")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_certificate.")

    @model_validator(mode="after")
    def _tls_pair(self) -> WebhookSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("set both webhook.tls_certificate and webhook.tls_key, or neither")
        return self


EVENT_TYPES = (
    "Microsoft.KeyVault.CertificateNearExpiry",
    "Microsoft.KeyVault.CertificateNewVersionCreated",
    "Microsoft.KeyVault.CertificateExpired",
)


class EventSubscriptionSettings(_Model):
    """One Event Grid subscription the emulator delivers to: a webhook or a storage queue."""

    name: str = Field(description="Subscription name (sent upper-cased in aeg-subscription-name).")
    destination: Literal["webhook", "storage_queue"] = Field(description="Where events go.")
    event_schema: Literal["eventgrid", "cloudevents"] = Field(
        default="eventgrid", description="Event Grid schema or CloudEvents 1.0.")
    endpoint: str | None = Field(
        default=None, description="Webhook URL, with the shared key as query parameter (?key=...).")
    ca_bundle: Path | None = Field(default=None, description="PEM bundle to trust for an https webhook.")
    queue_connection_string: SecretStr | None = Field(default=None, description="Storage queue connection string.")
    queue_name: str = Field(default="certlc", description="Queue to write to.")
    queue_base64: bool = Field(default=True, description="Write base64 JSON, as Event Grid does; false: plain JSON.")
    queue_message_ttl_seconds: int = Field(default=7 * 86400, description="Message time to live; -1 never expires.")
    event_types: list[str] = Field(default=list(EVENT_TYPES), description="Event types delivered (filter).")
    max_delivery_attempts: int = Field(default=30, ge=1, le=30, description="Event Grid's maxDeliveryAttempts.")
    event_ttl_minutes: int = Field(default=1440, ge=1, le=1440, description="Event Grid's eventTimeToLiveInMinutes.")
    max_events_per_batch: int = Field(default=1, ge=1, le=5000, description="Events per webhook request.")
    delivery_timeout_seconds: float = Field(default=30, gt=0, description="How long to wait for the webhook's answer.")
    retry_time_scale: float = Field(
        default=1.0, gt=0, le=1, description="Multiplies Event Grid's retry delays (tests and demos shorten them).")
    dead_letter_dir: Path | None = Field(
        default=None, description="Dead-letter folder (Event Grid's layout); default <emulator state>/deadletter.")
    dead_letter_delay_seconds: float = Field(default=300, ge=0, description="Event Grid dead-letters after 5 minutes.")

    @model_validator(mode="after")
    def _destination_fields(self) -> EventSubscriptionSettings:
        if self.destination == "webhook":
            if not self.endpoint:
                raise ValueError(f"subscription {self.name!r}: a webhook needs endpoint")
            scheme = urlsplit(self.endpoint).scheme
            if scheme != "https" and not (scheme == "http" and is_loopback_url(self.endpoint)):
                raise ValueError(f"subscription {self.name!r}: webhook endpoint must be https (http only on loopback)")
        if self.destination == "storage_queue" and self.queue_connection_string is None:
            raise ValueError(f"subscription {self.name!r}: a storage queue needs queue_connection_string")
        unknown = [t for t in self.event_types if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"subscription {self.name!r}: unknown event type(s) {unknown}")
        return self


class EmulatorSettings(_Model):
    """The local Key Vault emulator (certlc emulator)."""

    host: str = Field(default="127.0.0.1", description="Loopback address to listen on.")
    port: int = Field(default=8443, ge=0, description="HTTPS port of the first vault; further vaults use the next ports. 0 = any free port.")
    identity_port: int = Field(default=8442, ge=0, description="Port of the managed-identity token endpoint (plain http, loopback). 0 = any free port.")
    vaults: list[str] = Field(default=["demo"], description="Names of the emulated vaults, one port each.")
    principals: dict[str, str] = Field(
        default={"worker": "00000000-0000-0000-0000-00000000a001", "agent": "00000000-0000-0000-0000-00000000a002"},
        description="Managed identities the token endpoint serves: principal name -> client id. The first is the default.",
    )
    state_dir: Path | None = Field(default=None, description="Where vault state lives; default <state_dir>/emulator.")
    clock_offset: str = Field(
        default="0", description="Shift the emulator's clock (e.g. '25d') so certificates reach the event window now.")
    event_scan_seconds: float = Field(default=5, gt=0, le=3600, description="How often expiry events are looked for.")
    subscriptions: list[EventSubscriptionSettings] = Field(
        default_factory=list, description="Event Grid subscriptions: webhooks and storage queues to deliver events to.")

    @field_validator("clock_offset", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> str:
        from certlc.times import parse_duration

        parse_duration(value)
        return str(value)


class Settings(BaseSettings):
    """The root of certlc's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CERTLC_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    state_dir: Path = Field(default=Path(".certlc"), description="Local state: results, emulator, dev CA.")
    vaults: list[VaultSettings] = Field(default_factory=list, description="The vaults certlc manages.")
    ca_profiles: dict[str, CAProfile] = Field(default_factory=dict, description="CA profiles by name.")
    azure: AzureSettings = Field(default_factory=AzureSettings)
    renewal: RenewalSettings = Field(default_factory=RenewalSettings)
    devca: DevCASettings = Field(default_factory=DevCASettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    inventory: InventorySettings = Field(default_factory=InventorySettings)
    results_dir: Path | None = Field(default=None, description="Prefect result storage; default <state_dir>/results.")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [v.name for v in self.vaults]
        if len(names) != len(set(names)):
            raise ValueError(f"vault names must be unique, got {names}")
        for vault in self.vaults:
            if vault.ca_profile not in self.ca_profiles:
                raise ValueError(
                    f"vault {vault.name!r} uses CA profile {vault.ca_profile!r}, which is not defined "
                    f"(defined: {', '.join(sorted(self.ca_profiles)) or 'none'}); set the vault's ca_profile and "
                    f"define [ca_profiles.<name>] with its kind"
                )
            self.refuse_devca_for(vault, vault.ca_profile)
        return self

    def refuse_devca_for(self, vault: VaultSettings, profile: str) -> None:
        """The dev CA signs with a key it made itself: fine for the emulator, never for a real vault
        unless ``devca.allow_real_vaults`` says so on purpose."""
        chosen = self.ca_profiles.get(profile)
        if chosen is not None and chosen.kind == "devca" and not is_loopback_url(vault.url) \
                and not self.devca.allow_real_vaults:
            raise ValueError(
                f"vault {vault.name!r} ({vault.url}) would be renewed by CA profile {profile!r} of kind devca, the "
                "local development CA; give the profile the kind of your CA (adcs-web, certreq, acme, cfssl), or "
                "set devca.allow_real_vaults = true if this is really a test vault")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() merges file, environment and code itself (see _merge_build), so
        # validation sees one dict: no source may add values behind its back.
        return (init_settings,)

    # Derived paths -------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return (self.results_dir or self.state_dir / "results").resolve()

    @property
    def devca_path(self) -> Path:
        return (self.devca.state_dir or self.state_dir / "devca").resolve()

    @property
    def history_path(self) -> Path:
        return (self.inventory.history_path or self.state_dir / "history.sqlite").resolve()

    @property
    def rollout_path(self) -> Path:
        return (self.webhook.rollout_dir or self.state_dir / "rollout").resolve()

    @property
    def emulator_path(self) -> Path:
        return (self.emulator.state_dir or self.state_dir / "emulator").resolve()

    def vault(self, name: str) -> VaultSettings:
        """The configured vault called ``name`` (or whose URL is ``name``), else ConfigError."""
        for vault in self.vaults:
            if name in (vault.name, vault.url):
                return vault
        known = ", ".join(v.name for v in self.vaults) or "none"
        raise ConfigError(f"vault {name!r} is not in the configuration (configured vaults: {known})",
                          reason="VaultNotConfigured", vault=name)

    def ca_profile_for(self, vault: VaultSettings) -> CAProfile:
        return self.ca_profiles[vault.ca_profile]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", reason="ConfigUnreadable") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}", reason="ConfigUnreadable") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", reason="ConfigUnreadable") from None


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the configuration: ``path`` (or ``$CERTLC_CONFIG``), the environment, then ``overrides``.

    Raises ConfigError with one line naming the problem when the file cannot be read or a value
    is invalid.
    """
    if path is None and os.environ.get("CERTLC_CONFIG"):
        path = os.environ["CERTLC_CONFIG"]
    file_data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        file_data = _read_toml(path)
        base = path.resolve().parent
    try:
        settings = _merge_build(file_data, overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation(exc, path), reason="ConfigInvalid") from None
    return _anchor_paths(settings, base)


def _merge_build(file_data: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    # pydantic-settings lays init values *over* the environment; we want code > env > file, so
    # read the environment ourselves and deep-merge the three layers before validating once.
    env_values = EnvSettingsSource(Settings)()
    merged = deep_merge(deep_merge(file_data, env_values), overrides)
    return Settings.model_validate(merged)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``, recursing into nested mappings."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _anchor_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a config file are relative to the file, not to the current directory."""
    if not settings.state_dir.is_absolute():
        settings.state_dir = (base / settings.state_dir).resolve()
    if settings.azure.ca_bundle is not None and not settings.azure.ca_bundle.is_absolute():
        settings.azure.ca_bundle = (base / settings.azure.ca_bundle).resolve()
    for attr in ("results_dir",):
        value = getattr(settings, attr)
        if value is not None and not value.is_absolute():
            setattr(settings, attr, (base / value).resolve())
    for group in (settings.devca, settings.emulator):
        if group.state_dir is not None and not group.state_dir.is_absolute():
            group.state_dir = (base / group.state_dir).resolve()
    if settings.inventory.history_path is not None and not settings.inventory.history_path.is_absolute():
        settings.inventory.history_path = (base / settings.inventory.history_path).resolve()
    smtp = settings.notifications.smtp
    if smtp is not None:
        for attr in ("password_file", "ca_bundle"):
            value = getattr(smtp, attr)
            if value is not None and not value.is_absolute():
                setattr(smtp, attr, (base / value).resolve())
    for attr in ("tls_certificate", "tls_key", "rollout_dir"):
        value = getattr(settings.webhook, attr)
        if value is not None and not value.is_absolute():
            setattr(settings.webhook, attr, (base / value).resolve())
    for sub in settings.emulator.subscriptions:
        for attr in ("ca_bundle", "dead_letter_dir"):
            value = getattr(sub, attr)
            if value is not None and not value.is_absolute():
                setattr(sub, attr, (base / value).resolve())
    return settings


def _describe_validation(exc: ValidationError, path: Path | None) -> str:
    """Every problem (up to five), each naming where its value came from: an environment variable,
    else the file. One fix-and-rerun per typo is a poor way to learn about the next one."""
    described: list[tuple[str, str]] = []
    for error in exc.errors()[:5]:
        parts = [str(p) for p in error["loc"]]
        env_name = "CERTLC_" + "__".join(parts[:2]).upper() if parts else ""
        if env_name and env_name in os.environ:
            where = f"environment variable {env_name}"
        else:
            where = f"config file {path}" if path else "configuration"
        loc = ".".join(parts)
        described.append((where, f"{loc + ': ' if loc else ''}{error['msg'].removeprefix('Value error, ')}"))
    more = f" (and {exc.error_count() - 5} more problem(s))" if exc.error_count() > 5 else ""
    if len({where for where, _ in described}) == 1:  # one source: name it once
        return f"{described[0][0]}: " + "; ".join(text for _, text in described) + more
    return "; ".join(f"{where}: {text}" for where, text in described) + more
