"""The agent's settings: the Key Vault VM extension's settings JSON, as-is, plus certlc's additions.

The file (``certlc agent --config``, JSON or TOML) is what the extension is given::

    {
      "secretsManagementSettings": {
        "pollingIntervalInS": "3600",
        "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault",
        "requireInitialSync": true,
        "linkOnRenewal": false,
        "observedCertificates": [
          "https://contoso.vault.azure.net/secrets/web",
          {"url": "https://contoso.vault.azure.net/secrets/api",
           "certificateStoreLocation": "/etc/ssl/api", "customSymbolicLinkName": "api.pem",
           "acls": [{"user": "www-data", "group": "www-data"}],
           "certlc": {"outputs": ["fullchain", "key"], "reload": ["systemctl", "reload", "nginx"],
                      "verify": "127.0.0.1:443"}}
        ]
      },
      "authenticationSettings": {"msiClientId": "..."},
      "certlc": {"defaults": {"keep_versions": 3}, "ca_bundle": "/etc/certlc/vault-ca.pem"}
    }

The extension's ARM/CLI wrappers (``{"settings": {...}}``, ``{"properties": {"settings": {...}}}``)
are accepted too. Everything certlc adds lives under ``certlc`` keys (one at the top, one per
observed certificate), so the extension's own part stays exactly what the extension reads.
:func:`load_agent_settings` reads a file; :func:`parse_agent_settings` a mapping. Both raise
:class:`~certlc.errors.ConfigError` naming the bad field.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from certlc.config import deep_merge
from certlc.errors import ConfigError

__all__ = [
    "DEFAULT_POLLING_INTERVAL",
    "DEFAULT_STORE_LOCATION",
    "KEY_FORMS",
    "OUTPUT_FORMS",
    "WINDOWS_STORE_LOCATIONS",
    "AclEntry",
    "AgentOptions",
    "AgentSettings",
    "AuthenticationSettings",
    "CertificateOptions",
    "ObservedCertificate",
    "PfxOptions",
    "ReportOptions",
    "SecretsManagementSettings",
    "VerifyTarget",
    "Watched",
    "WindowsStore",
    "default_state_dir",
    "load_agent_settings",
    "parse_agent_settings",
    "parse_secret_url",
]

DEFAULT_POLLING_INTERVAL = 3600
DEFAULT_STORE_LOCATION = "/var/lib/waagent/Microsoft.Azure.KeyVault"
# pem: key, leaf and chain in one file, as the Linux extension writes it.
OUTPUT_FORMS = ("pem", "cert", "key", "chain", "fullchain", "pfx")
# Output forms whose file holds the private key.
KEY_FORMS = frozenset({"pem", "key", "pfx"})
# The Windows extension's certificateStoreLocation values (the default is LocalMachine).
WINDOWS_STORE_LOCATIONS = {"localmachine": "LocalMachine", "currentuser": "CurrentUser"}
_STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")


def default_state_dir() -> Path:
    """The agent's state directory: the systemd unit's StateDirectory, or ProgramData on Windows."""
    return Path(r"C:\ProgramData\certlc\agent") if sys.platform == "win32" else Path("/var/lib/certlc-agent")


_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?")

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _mode(value: Any) -> int:
    """A file mode from an octal string ('0640', '640', '0o640') or an int (0o640 in TOML)."""
    if isinstance(value, bool):
        raise ValueError("a file mode is an octal string such as '0640'")
    if isinstance(value, int):
        mode = value
        if mode > 0o777 and all(ch in "01234567" for ch in str(value)):
            raise ValueError(f"{value} reads as the decimal number {value}; give the mode as a string, "
                             f"\"0{value}\"")
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(ch not in "01234567" for ch in text):
            raise ValueError(f"{value!r} is not an octal file mode such as '0640'")
        mode = int(text, 8)
    else:
        raise ValueError("a file mode is an octal string such as '0640'")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"file mode {oct(mode)} is outside 0000-0777 (no setuid, setgid or sticky bits)")
    return mode


def parse_secret_url(url: str) -> tuple[str, str]:
    """``(vault_url, secret_name)`` of ``https://<vault>/secrets/<name>[/<version>]``.

    A version in the URL is dropped: the agent always follows the latest version, as the
    extension does. Certificate URLs (``/certificates/``) are refused: only ``/secrets`` returns
    the private key.
    """
    parts = urlsplit(url.strip())
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{url!r} is not an https Key Vault secret URL (https://<vault>/secrets/<name>)")
    if parts.username is not None or parts.password is not None:
        # It would be logged and reported; Key Vault takes no credentials in the URL anyway.
        raise ValueError(f"https://{parts.hostname}{parts.path}: a secret URL holds no user name or password")
    if segments[:1] == ["certificates"]:
        raise ValueError(f"{url!r} is a certificate URL; observe the secret instead "
                         f"(https://{parts.netloc}/secrets/{segments[1] if len(segments) > 1 else '<name>'}): "
                         "only /secrets returns the private key")
    if len(segments) not in (2, 3) or segments[0] != "secrets" or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not a Key Vault secret URL (https://<vault>/secrets/<name>)")
    name = segments[1]
    if not all(ch.isalnum() or ch == "-" for ch in name):
        raise ValueError(f"{url!r}: secret name {name!r} may hold only letters, digits and dashes")
    return f"https://{parts.netloc}", name


class PfxOptions(_Model):
    """The PFX output: password from a file or an environment variable (never in the settings)."""

    password_file: Path | None = Field(default=None, description="File whose first line is the PFX password.")
    password_env: str | None = Field(default=None, description="Environment variable holding the PFX password.")
    legacy: bool = Field(
        default=False,
        description="Encrypt with PBE-SHA1-3DES and a SHA-1 MAC, which Windows Server 2016 and older need "
                    "(default: AES-256 and SHA-256, which they cannot import).")

    @model_validator(mode="after")
    def _one_password_source(self) -> PfxOptions:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self


def _host_name(host: str, shown: str) -> None:
    """An IP address or a DNS name the TLS connection can use (IDNA-encodable)."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{shown!r}: {host!r} is not a host name or IP address") from None


class VerifyTarget(_Model):
    """Where the installed certificate must be served: ``host:port``, with an optional SNI name."""

    address: str = Field(description="host:port of the TLS service, e.g. 127.0.0.1:443 or [::1]:8443.")
    server_name: str | None = Field(default=None, description="SNI name to send; default: the host, if a name.")
    timeout: float = Field(default=10, gt=0, le=300, description="Seconds to connect and handshake.")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:443)")
        _host_name(host, value)
        return value

    @field_validator("server_name")
    @classmethod
    def _sni(cls, value: str | None) -> str | None:
        if value is not None:
            _host_name(value, value)
        return value

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class AclEntry(_Model):
    """The Linux extension's ``acls`` entry: who may read the certificate's files."""

    user: str | None = None
    group: str | None = None

    @field_validator("user", "group")
    @classmethod
    def _account_name(cls, value: str | None) -> str | None:
        # Names go into a setfacl entry (u:NAME:r): nothing that could add another entry.
        if value is not None and not _ACCOUNT.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a user or group name")
        return value

    def acl_entries(self) -> list[str]:
        """The POSIX ACL qualifiers for setfacl: u:NAME and/or g:NAME."""
        return [f"{tag}:{name}" for tag, name in (("u", self.user), ("g", self.group)) if name is not None]

    @model_validator(mode="after")
    def _something(self) -> AclEntry:
        if self.user is None and self.group is None:
            raise ValueError("an acls entry names a user, a group or both")
        return self


class CertificateOptions(_Model):
    """certlc's additions for one observed certificate (the ``certlc`` object)."""

    name: str | None = Field(
        default=None, description="File stem in the store location; default '<vault>.<secret>' as the extension names it.")
    outputs: list[Literal["pem", "cert", "key", "chain", "fullchain", "pfx"]] = Field(
        default=["pem"],
        description="Files to write: pem (key, leaf, chain in one file, as the Linux extension writes it), "
                    "cert (leaf), key (PKCS#8), chain (issuers), fullchain (leaf + issuers), pfx.")
    pfx: PfxOptions = Field(default_factory=PfxOptions, description="PFX password and encryption.")
    owner: str | int | None = Field(default=None, description="User owning the files (name or uid); default: the agent's.")
    group: str | int | None = Field(default=None, description="Group of the files (name or gid); default: the agent's.")
    readers: list[AclEntry] = Field(
        default_factory=list, max_length=32,
        description="More users/groups given read access to every file through a POSIX ACL (setfacl), "
                    "e.g. [{\"user\": \"nginx\"}, {\"group\": \"postfix\"}].")
    mode: int = Field(default=0o600, description="Mode of files holding the private key (pem, key, pfx); never o+r.")
    public_mode: int = Field(default=0o644, description="Mode of files without the key (cert, chain, fullchain).")
    link: Path | None = Field(
        default=None, description="A stable symlink (absolute path) to the directory of the current version.")
    reload: str | list[str] | None = Field(
        default=None, description="Command run after installing: an argv list, or a string split like a shell "
                                  "would (no shell unless reload_shell).")
    reload_shell: bool = Field(default=False, description="Run a string reload command through /bin/sh.")
    reload_timeout: float = Field(default=60, gt=0, le=3600, description="Seconds the reload command may take.")
    verify: VerifyTarget | None = Field(default=None, description="TLS endpoint that must serve the new certificate.")
    keep_versions: int = Field(default=2, ge=0, le=100, description="Old versions kept besides the current one.")

    @field_validator("mode", "public_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> int:
        return _mode(value)

    @field_validator("verify", mode="before")
    @classmethod
    def _verify_shorthand(cls, value: Any) -> Any:
        return {"address": value} if isinstance(value, str) else value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"name at least one output form ({', '.join(OUTPUT_FORMS)})")
        if len(set(value)) != len(value):
            raise ValueError("an output form is listed twice")
        return value

    @field_validator("name")
    @classmethod
    def _stem(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..") or value.startswith(".")):
            raise ValueError(f"{value!r} is not a plain file name")
        return value

    @field_validator("link")
    @classmethod
    def _absolute_link(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value

    @field_validator("reload")
    @classmethod
    def _reload_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and (not value or (isinstance(value, str) and not value.strip())):
            raise ValueError("the reload command is empty")
        return value

    @field_validator("owner", "group")
    @classmethod
    def _id_range(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and not 0 <= value < 2**32 - 1:
            raise ValueError(f"{value} is not a user or group id (0 to 4294967294)")
        if isinstance(value, str) and not _ACCOUNT.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a user or group name")
        return value

    @model_validator(mode="after")
    def _modes(self) -> CertificateOptions:
        if self.mode & 0o007:
            raise ValueError(f"mode {self.mode:04o} lets others read or write the private key; use e.g. 0600 or 0640")
        if not self.mode & 0o400:
            raise ValueError(f"mode {self.mode:04o} lets not even the owner read the key; use e.g. 0600 or 0640")
        if self.public_mode & 0o022:
            raise ValueError(f"public_mode {self.public_mode:04o} lets others change the certificate files; "
                             "use e.g. 0644")
        if isinstance(self.reload, str) and not self.reload_shell:
            try:
                if not shlex.split(self.reload):
                    raise ValueError("the reload command is empty")
            except ValueError as exc:
                raise ValueError(f"reload {self.reload[:80]!r} cannot be split into arguments ({exc}); "
                                 "give it as a list, or set reload_shell") from None
        if self.reload_shell and not isinstance(self.reload, str):
            raise ValueError("reload_shell needs the reload command as one string")
        return self


class ObservedCertificate(_Model):
    """One ``observedCertificates`` object (the URL-string form becomes ``{"url": ...}``)."""

    url: str = Field(description="https://<vault>/secrets/<name>")
    certificate_store_location: str | None = Field(default=None, alias="certificateStoreLocation")
    certificate_store_name: str | None = Field(default=None, alias="certificateStoreName")
    custom_symbolic_link_name: str | None = Field(default=None, alias="customSymbolicLinkName")
    acls: list[AclEntry] = Field(default_factory=list)
    key_exportable: bool | None = Field(default=None, alias="keyExportable")  # Windows; no meaning for files
    accounts: list[str] = Field(default_factory=list)  # Windows: accounts given read access to the key
    certlc: CertificateOptions = Field(default_factory=CertificateOptions)

    @field_validator("url")
    @classmethod
    def _secret_url(cls, value: str) -> str:
        parse_secret_url(value)
        return value

    @field_validator("custom_symbolic_link_name")
    @classmethod
    def _link_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ValueError(f"{value!r} is not a plain file name (the link is made in the store location)")
        return value


class SecretsManagementSettings(_Model):
    polling_interval: int = Field(default=DEFAULT_POLLING_INTERVAL, alias="pollingIntervalInS", gt=0, le=7 * 86400)
    certificate_store_location: str = Field(default=DEFAULT_STORE_LOCATION, alias="certificateStoreLocation")
    certificate_store_name: str | None = Field(default=None, alias="certificateStoreName")
    require_initial_sync: bool = Field(default=False, alias="requireInitialSync")
    link_on_renewal: bool = Field(default=False, alias="linkOnRenewal")
    observed_certificates: list[ObservedCertificate] = Field(alias="observedCertificates", min_length=1)

    @field_validator("polling_interval", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # The extension's documented form is a string ("3600"); accept it and an int alike.
        if isinstance(value, bool):
            raise ValueError("pollingIntervalInS is a number of seconds, e.g. \"3600\"")
        if isinstance(value, str):
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"pollingIntervalInS {value!r} is not a whole number of seconds")
            return int(text)
        return value

    @field_validator("observed_certificates", mode="before")
    @classmethod
    def _url_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            # A single URL, or the extension v1's comma-separated list.
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [{"url": item} if isinstance(item, str) else item for item in value]
        return value


class AuthenticationSettings(_Model):
    msi_client_id: str | None = Field(default=None, alias="msiClientId")
    # azure-identity finds the endpoint itself (IMDS, or Arc's IDENTITY_ENDPOINT); kept for the record.
    msi_endpoint: str | None = Field(default=None, alias="msiEndpoint")


class ReportOptions(_Model):
    """The rollout report: a local JSON file after each pass, optionally POSTed (see docs/agent.md)."""

    path: Path | None = Field(default=None, description="The state file; default <state_dir>/rollout.json.")
    url: str | None = Field(default=None, description="POST the report here (the webhook app's /api/rollout).")
    key_env: str | None = Field(default=None, description="Environment variable holding the shared key.")
    key_file: Path | None = Field(default=None, description="File whose first line is the shared key.")
    header: str = Field(default="Authorization",
                        description="Header carrying the key: 'Authorization' sends 'Bearer <key>', any other "
                                    "header (e.g. X-Certlc-Key) the key itself.")
    timeout: float = Field(default=10, gt=0, le=120, description="Seconds for the POST.")
    host: str | None = Field(default=None, description="The host name reported; default: this host's name.")
    ca_bundle: Path | None = Field(
        default=None, description="Extra PEM bundle trusted for the report URL's TLS; default certlc.ca_bundle.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise ValueError(f"{value!r}: the key would travel in clear text; use https:// (http only on loopback)")
        return value

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError(f"{value!r} is not an HTTP header name")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> ReportOptions:
        if self.key_env is not None and self.key_file is not None:
            raise ValueError("give key_env or key_file, not both")
        return self


class AgentOptions(_Model):
    """certlc's top-level additions (the top ``certlc`` object)."""

    defaults: dict[str, Any] = Field(
        default_factory=dict, description="certlc options applied to every observed certificate (each may override).")
    ca_bundle: Path | None = Field(default=None, description="Extra PEM bundle trusted for the vault's TLS.")
    verify_challenge_resource: bool | None = Field(
        default=None, description="Key Vault challenge-resource check; default on except for loopback vaults.")
    max_backoff: int = Field(default=3600, gt=0, le=7 * 86400,
                             description="Longest wait in seconds after failures (vault down).")
    state_dir: Path | None = Field(
        default=None, description="The agent's own state (rollout report, Windows store versions); default "
                                  "/var/lib/certlc-agent, C:\\ProgramData\\certlc\\agent on Windows.")
    report: ReportOptions = Field(default_factory=ReportOptions, description="The rollout report.")

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir()

    @property
    def report_path(self) -> Path:
        return self.report.path if self.report.path is not None else self.resolved_state_dir / "rollout.json"


class WindowsStore(BaseModel):
    """Where a certificate goes on Windows: ``Cert:\\<location>\\<name>`` (the extension's settings)."""

    model_config = ConfigDict(frozen=True)

    name: str = "My"
    location: str = "LocalMachine"
    exportable: bool = False
    accounts: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"Cert:\\{self.location}\\{self.name}"


class Watched(BaseModel):
    """One observed certificate with everything resolved: what the poller and installer use."""

    model_config = ConfigDict(frozen=True)

    url: str
    vault_url: str
    secret_name: str
    store: Path
    stem: str
    symlink_name: str | None
    options: CertificateOptions
    # Set only on Windows when certificateStoreName is given: the certificate goes into that store.
    windows_store: WindowsStore | None = None

    @property
    def key(self) -> str:
        """A stable identity for logs and state: '<vault host>/<secret>'."""
        return f"{urlsplit(self.vault_url).netloc}/{self.secret_name}"


class AgentSettings(_Model):
    secrets_management: SecretsManagementSettings = Field(alias="secretsManagementSettings")
    authentication: AuthenticationSettings = Field(default_factory=AuthenticationSettings, alias="authenticationSettings")
    logging_settings: dict[str, Any] | None = Field(default=None, alias="loggingSettings")  # extension's; unused
    certlc: AgentOptions = Field(default_factory=AgentOptions)

    @property
    def polling_interval(self) -> int:
        return self.secrets_management.polling_interval

    @property
    def watched(self) -> list[Watched]:
        return self._watched

    @model_validator(mode="after")
    def _resolve(self) -> AgentSettings:
        sms = self.secrets_management
        resolved: list[Watched] = []
        seen_urls: dict[tuple[str, str], int] = {}
        seen_files: dict[Path, int] = {}
        for index, obs in enumerate(sms.observed_certificates):
            where = f"secretsManagementSettings.observedCertificates.{index}"
            vault_url, name = parse_secret_url(obs.url)
            options = obs.certlc
            if self.certlc.defaults:
                explicit = options.model_dump(exclude_unset=True, by_alias=True)
                try:
                    options = CertificateOptions.model_validate(deep_merge(self.certlc.defaults, explicit))
                except ValidationError as exc:
                    raise ValueError(f"{where}.certlc (with certlc.defaults): {_first_error(exc)}") from None
            if obs.acls:
                # The first entry owns the files (as the extension's single-entry form is used);
                # every further entry gets read access through a POSIX ACL.
                acl, *more = obs.acls
                update: dict[str, Any] = {"readers": [*more, *options.readers]}
                if options.owner is None and acl.user is not None:
                    update["owner"] = acl.user
                if options.group is None and acl.group is not None:
                    update["group"] = acl.group
                options = options.model_copy(update=update)
            location = obs.certificate_store_location or sms.certificate_store_location
            store = Path(location)
            windows_store = _windows_store(obs, sms, where, self.certlc)
            if windows_store is not None:
                store = self.certlc.resolved_state_dir / "winstore"  # the versions certlc put in the store
            elif not store.is_absolute():
                raise ValueError(f"{where}.certificateStoreLocation: {location!r} is not an absolute directory "
                                 "(Windows store locations such as LocalMachine are not supported on this platform)")
            host = urlsplit(vault_url).netloc.split(".")[0].split(":")[0]
            stem = options.name or f"{host}.{name}"
            key = (vault_url.lower(), name.lower())  # Key Vault names are case-insensitive
            if key in seen_urls:
                raise ValueError(f"{where}.url: {obs.url} is observed twice (also entry {seen_urls[key]})")
            seen_urls[key] = index
            # Every name this entry makes in its store, and the links it makes anywhere: no two
            # entries may share one, and no link may stand where the entry's own files go.
            own = {store / stem, store / f"{stem}.current", store / f"{stem}.versions"}
            links = [store / obs.custom_symbolic_link_name] if obs.custom_symbolic_link_name else []
            if options.link is not None:
                links.append(options.link)
            for path in [*sorted(own), *links]:
                if path in seen_files:
                    raise ValueError(f"{where}: {path} is also used by entry {seen_files[path]}; set certlc.name "
                                     "or another link name")
            for link in links:
                if link in own or link == store:
                    raise ValueError(f"{where}: the link {link} would replace this certificate's own files; "
                                     "choose another name")
            seen_files.update(dict.fromkeys([*own, *links], index))
            resolved.append(Watched(url=obs.url, vault_url=vault_url, secret_name=name, store=store, stem=stem,
                                    symlink_name=obs.custom_symbolic_link_name, options=options,
                                    windows_store=windows_store))
        self._watched = resolved
        return self

    _watched: list[Watched] = []
    _source: Path | None = None

    @property
    def source(self) -> Path | None:
        """The settings file (load_agent_settings), None for settings built in code."""
        return self._source

    @property
    def reports(self) -> bool:
        """Whether the agent writes the rollout report: settings from a file (the real agent), or configured."""
        return (self._source is not None or self.certlc.state_dir is not None
                or "report" in self.certlc.model_fields_set)


def _windows_store(obs: ObservedCertificate, sms: SecretsManagementSettings, where: str,
                   agent: AgentOptions) -> WindowsStore | None:
    """The Windows certificate store for ``obs``: only on Windows, and only with a certificateStoreName."""
    name = obs.certificate_store_name or sms.certificate_store_name
    if sys.platform != "win32" or not name:
        return None
    if not _STORE_NAME.fullmatch(name):
        raise ValueError(f"{where}.certificateStoreName: {name!r} is not a certificate store name such as My")
    location = obs.certificate_store_location
    if location is None and sms.certificate_store_location != DEFAULT_STORE_LOCATION:
        location = sms.certificate_store_location
    canonical = WINDOWS_STORE_LOCATIONS.get((location or "LocalMachine").lower())
    if canonical is None:
        raise ValueError(f"{where}.certificateStoreLocation: {location!r} is not LocalMachine or CurrentUser "
                         "(with certificateStoreName the certificate goes into a Windows store)")
    return WindowsStore(name=name, location=canonical, exportable=bool(obs.key_exportable),
                        accounts=tuple(obs.accounts))


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _unwrap(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings object inside the ARM/CLI wrappers the extension's settings arrive in."""
    if "secretsManagementSettings" not in data:
        props = data.get("properties")
        if isinstance(props, Mapping) and isinstance(props.get("settings"), Mapping):
            data = {**props["settings"], **({"certlc": data["certlc"]} if "certlc" in data else {})}
        elif isinstance(data.get("settings"), Mapping):
            data = {**data["settings"], **({"certlc": data["certlc"]} if "certlc" in data else {})}
    return data


def parse_agent_settings(data: Mapping[str, Any], *, source: str = "agent settings",
                         base: Path | None = None) -> AgentSettings:
    """Validate the extension's settings object (plus ``certlc`` keys); ConfigError names the field.

    ``base`` anchors relative paths (PFX password file, CA bundle) — the settings file's directory.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object with secretsManagementSettings", reason="ConfigInvalid")
    data = _unwrap(data)
    nul = _nul_path(data)
    if nul is not None:
        raise ConfigError(f"{source}: {nul}: a NUL character cannot be in a name or path", reason="ConfigInvalid")
    if "secretsManagementSettings" not in data:
        raise ConfigError(f"{source}: secretsManagementSettings is missing (the Key Vault VM extension's "
                          "settings object)", reason="ConfigInvalid")
    try:
        settings = AgentSettings.model_validate(dict(data))
    except ValidationError as exc:
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_first_error(exc)}{more}", reason="ConfigInvalid") from None
    if base is not None:
        _anchor(settings, base)
    bundle = settings.certlc.ca_bundle
    if bundle is not None and not bundle.is_file():
        raise ConfigError(f"{source}: certlc.ca_bundle: {bundle} is not a readable file", reason="ConfigInvalid")
    return settings


def _nul_path(value: Any, where: str = "") -> str | None:
    """The dotted path of the first string holding a NUL (which no file name can), or None."""
    if isinstance(value, str):
        return where or "value" if "\x00" in value else None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nul_path(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _anchor(settings: AgentSettings, base: Path) -> None:
    # Relative paths are relative to the settings file, never to the working directory (a
    # service's is / or a read-only checkout).
    if settings.certlc.ca_bundle is not None and not settings.certlc.ca_bundle.is_absolute():
        settings.certlc.ca_bundle = (base / settings.certlc.ca_bundle).resolve()
    if settings.certlc.state_dir is not None and not settings.certlc.state_dir.is_absolute():
        settings.certlc.state_dir = (base / settings.certlc.state_dir).resolve()
    report = settings.certlc.report
    if report.key_file is not None and not report.key_file.is_absolute():
        report.key_file = (base / report.key_file).resolve()
    if report.path is not None and not report.path.is_absolute():
        report.path = (base / report.path).resolve()
    if report.ca_bundle is not None and not report.ca_bundle.is_absolute():
        report.ca_bundle = (base / report.ca_bundle).resolve()
    anchored = []
    for watched in settings.watched:
        pfx = watched.options.pfx
        if pfx.password_file is not None and not pfx.password_file.is_absolute():
            pfx = pfx.model_copy(update={"password_file": (base / pfx.password_file).resolve()})
            watched = watched.model_copy(update={"options": watched.options.model_copy(update={"pfx": pfx})})
        anchored.append(watched)
    settings._watched = anchored


def load_agent_settings(path: Path | str) -> AgentSettings:
    """Read the agent's settings from a JSON file (the extension's) or a TOML file (by suffix)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read agent settings {path}: {exc.strerror or exc}", reason="ConfigUnreadable") from None
    text = raw.decode("utf-8-sig", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"agent settings {path}: not valid {kind}: {exc}", reason="ConfigUnreadable") from None
    settings = parse_agent_settings(data, source=f"agent settings {path}", base=path.resolve().parent)
    settings._source = path
    return settings
