"""cfssl as a CA: the remote signer's authenticated sign endpoint (``/api/v1/cfssl/authsign``).

The template certlc resolved for a certificate names a cfssl signing *profile* (after the CA
profile's ``template_map``, so a v1 template name can be renamed too); the cfssl profile, not
the request, decides validity, key usage and EKUs. cfssl answers at once: issued or refused,
never held for approval.

Error mapping (cfssl puts every refusal in an HTTP 400 with ``errors[].code/message``):

* ``invalid token``: our HMAC key is not cfssl's. Configuration, not a denial of this request:
  :class:`TerminalError` ``CaAuthFailed`` (stop and alert; retrying cannot help).
* ``no authentication provider``: cfssl has no profile of that name that takes authenticated
  requests (an unknown profile falls back to cfssl's default policy): ``denied``,
  ``TemplateNotSupported``, as the dev CA and AD CS answer for an unknown template.
* codes 5xxx (policy) and 9xxx (CSR): ``denied`` with cfssl's message.
* anything else cfssl refuses, or an answer we cannot read: :class:`TerminalError`.
* no connection, timeout, HTTP 5xx/429/408: :class:`TransientError`.

Beware: a cfssl ``signing.default`` that itself has an ``auth_key`` signs requests for unknown
profiles with the default policy. Give cfssl no authenticated default so unknown profiles are
refused.

``check_templates`` asks, per profile, without issuing anything (answers seen from a real
``cfssl serve``, 1.2.0): ``/info`` for an unknown profile answers the *default* policy, not an
error, and says nothing about auth keys; so it also sends an ``authsign`` whose request cannot be
signed (not DER). cfssl checks the profile's auth provider and then the token before it reads
the request, so the answer tells: a CSR error (9xxx) = profile found and our key accepted;
``invalid token`` = the profile has another key; ``no authentication provider`` = the profile
is unknown or takes no authenticated requests, told apart by whether its ``/info`` policy
differs from the default's.

The HMAC key never leaves this module: it is not logged, not put in messages, and the request
body (which carries the token) is never quoted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import ssl
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.ca.base import Disposition, DispositionStatus, Health, SigningRequest, TemplateCheck, TemplateStatus
from certlc.ca.http import check_options, check_status, http_endpoint, timeout_option, transport_errors, trust_context
from certlc.config import CAProfile, Settings
from certlc.errors import ConfigError, TerminalError, TransientError

__all__ = ["AUTHSIGN_PATH", "INFO_PATH", "CfsslConnector", "from_profile"]

log = logging.getLogger(__name__)

AUTHSIGN_PATH = "/api/v1/cfssl/authsign"
INFO_PATH = "/api/v1/cfssl/info"
DEFAULT_TIMEOUT = 30.0
KIND = "cfssl"
# cfssl error categories (code // 1000) that refuse this request, not the setup.
_POLICY_ERROR, _CSR_ERROR = 5, 9
# check_templates' probe: PEM armor around bytes that are no DER request, so cfssl can never sign it.
_UNSIGNABLE_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"


class CfsslConnector:
    """A cfssl ``serve`` (or multirootca) behind the CA connector contract."""

    def __init__(
        self,
        profile: str,
        endpoint: str,
        auth_key: bytes,
        *,
        template_map: dict[str, str] | None = None,
        label: str | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.profile = profile
        self.endpoint = endpoint.rstrip("/")
        self._key = auth_key
        self.template_map = dict(template_map or {})
        self.label = label
        self._client = httpx.Client(verify=verify, timeout=timeout, transport=transport)
        self._chain: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:  # keep the key out of reprs (tracebacks, debug logs)
        return f"CfsslConnector(profile={self.profile!r}, endpoint={self.endpoint!r}, label={self.label!r})"

    # --- wire ---------------------------------------------------------------------------------
    def cfssl_profile(self, template: str) -> str:
        return self.template_map.get(template, template)

    def authsign_body(self, csr_pem: str, cfssl_profile: str) -> dict[str, str]:
        """The authsign envelope: the token is an HMAC over exactly the bytes sent as ``request``."""
        inner: dict[str, str] = {"certificate_request": csr_pem, "profile": cfssl_profile}
        if self.label:
            inner["label"] = self.label
        request = json.dumps(inner).encode()
        token = hmac.new(self._key, request, hashlib.sha256).digest()
        return {"token": base64.b64encode(token).decode(), "request": base64.b64encode(request).decode()}

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = self.endpoint + path
        what = f"cfssl at {self.endpoint}"
        with transport_errors(what):
            response = self._client.post(url, json=body)
        status = response.status_code
        check_status(what, status)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or "success" not in data:
            # A 404 page or another service: the endpoint is wrong, which retrying cannot fix.
            raise TerminalError(
                f"{url} did not answer as a cfssl API (HTTP {status}: {response.text[:120]!r}); "
                "check the CA profile's endpoint", reason="CaResponseInvalid")
        return status, data

    @staticmethod
    def _first_error(data: dict[str, Any]) -> tuple[int, str]:
        errors = data.get("errors") or []
        if errors and isinstance(errors[0], dict):
            code = errors[0].get("code")
            return (code if isinstance(code, int) else 0), str(errors[0].get("message") or "")
        return 0, ""

    # --- chain --------------------------------------------------------------------------------
    def chain(self, cfssl_profile: str = "") -> tuple[str, ...]:
        """The signer's certificate from ``/info``: cfssl's sign answer holds only the leaf.

        Cached per profile (a multiroot signer may pick different roots); the CA does not change
        under a running worker often enough to ask on every request.
        """
        if cfssl_profile not in self._chain:
            self._chain[cfssl_profile] = (self._signer_pem(cfssl_profile),)
        return self._chain[cfssl_profile]

    def _info(self, cfssl_profile: str) -> tuple[int, dict[str, Any]]:
        return self._post(INFO_PATH, {"label": self.label or "", "profile": cfssl_profile})

    def _signer_pem(self, cfssl_profile: str) -> str:
        status, data = self._info(cfssl_profile)
        pem = (data.get("result") or {}).get("certificate") if data.get("success") else None
        if not pem:
            code, message = self._first_error(data)
            raise TerminalError(f"cfssl at {self.endpoint} gave no CA certificate: {message or status}",
                                reason="CaResponseInvalid", ca_code=code)
        try:
            x509.load_pem_x509_certificate(str(pem).encode())
        except ValueError:
            raise TerminalError(f"cfssl at {self.endpoint} sent an unreadable CA certificate",
                                reason="CaResponseInvalid") from None
        return str(pem).strip() + "\n"

    # --- contract -----------------------------------------------------------------------------
    def submit(self, request: SigningRequest) -> Disposition:
        cfssl_profile = self.cfssl_profile(request.template)
        request_id = request.request_key
        status, data = self._post(AUTHSIGN_PATH, self.authsign_body(request.csr_pem, cfssl_profile))
        if data.get("success"):
            return self._issued(data, request, cfssl_profile)
        code, message = self._first_error(data)
        cfssl_says = f"cfssl: {message or 'no message'} (code {code})"
        if message == "invalid token":
            raise TerminalError(
                f"cfssl at {self.endpoint} refused certlc's authentication for profile {cfssl_profile!r}: "
                f"the CA profile's auth key is not the one cfssl has for that profile",
                reason="CaAuthFailed", ca_code=code)
        if message == "no authentication provider":
            return Disposition(DispositionStatus.DENIED, request_id, reason="TemplateNotSupported",
                               message=f"cfssl has no authenticated signing profile {cfssl_profile!r} ({cfssl_says})")
        if code // 1000 == _POLICY_ERROR:
            return Disposition(DispositionStatus.DENIED, request_id, reason="Denied", message=cfssl_says)
        if code // 1000 == _CSR_ERROR:
            return Disposition(DispositionStatus.DENIED, request_id, reason="CsrRejected", message=cfssl_says)
        raise TerminalError(f"cfssl at {self.endpoint} refused the request (HTTP {status}): {cfssl_says}",
                            reason="CaError", ca_code=code)

    def _issued(self, data: dict[str, Any], request: SigningRequest, cfssl_profile: str) -> Disposition:
        pem = (data.get("result") or {}).get("certificate")
        try:
            cert = x509.load_pem_x509_certificate(str(pem).encode())
            csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        except ValueError:
            raise TerminalError(f"cfssl at {self.endpoint} reported success without a readable certificate",
                                reason="CaResponseInvalid") from None
        # Only a certificate for the key Key Vault holds can be merged; anything else is a CA fault.
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(der, spki) != csr.public_key().public_bytes(der, spki):
            raise TerminalError(f"cfssl at {self.endpoint} issued a certificate for another key",
                                reason="CaResponseInvalid")
        # cfssl keeps no request ids; the serial is what its logs and certdb know the result by.
        serial = format(cert.serial_number, "x")
        log.info("cfssl issued serial %s with profile %s for %s/%s", serial, cfssl_profile,
                 request.vault, request.certificate)
        return Disposition(
            status=DispositionStatus.ISSUED,
            request_id=serial,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=self.chain(cfssl_profile),
            reason="Issued",
            message="Issued",
        )

    def retrieve(self, request_id: str) -> Disposition:
        raise TerminalError(
            f"cfssl never holds requests for approval, so there is nothing to retrieve for {request_id!r}",
            reason="RequestUnknown", request_id=request_id)

    def check(self) -> Health:
        problems: list[str] = []
        try:
            self._signer_pem("")  # not the cache: a preflight must see the CA as it is now
        except (TransientError, TerminalError) as exc:
            problems.append(str(exc))
        return Health(ok=not problems, problems=problems)

    def check_templates(self, templates: list[str]) -> list[TemplateCheck]:
        """Each template's cfssl profile: known, taking authenticated requests, with our key."""
        default = self._info("")[1].get("result")
        return [self._template_check(asked, default) for asked in templates]

    def _template_check(self, asked: str, default: object) -> TemplateCheck:
        name = self.cfssl_profile(asked)
        # Differs from the default policy: cfssl has a profile of that name (/info falls back to
        # the default for unknown ones, so an exact copy of the default cannot be told apart).
        _, info = self._info(name)
        own_policy = bool(info.get("success")) and info.get("result") != default
        _, data = self._post(AUTHSIGN_PATH, self.authsign_body(_UNSIGNABLE_CSR, name))
        code, message = self._first_error(data)
        where = f"cfssl at {self.endpoint}"
        if not data.get("success") and code // 1000 == _CSR_ERROR:
            if own_policy:
                return TemplateCheck(asked, name, TemplateStatus.OK,
                                     f"{where} has signing profile {name!r} and accepts certlc's auth key for it")
            return TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                                 f"{where} has no signing profile {name!r}; its authenticated default policy "
                                 "would sign such requests instead",
                                 f"add profile {name!r} to cfssl's signing.profiles or fix template_map; give cfssl's "
                                 "signing.default no auth_key so unknown profiles are refused")
        if message == "invalid token":
            return TemplateCheck(asked, name, TemplateStatus.NOT_ENROLLABLE,
                                 f"{where} refuses certlc's auth key for profile {name!r}",
                                 f"set the CA profile's auth key to the key cfssl's profile {name!r} uses "
                                 "(its auth_key in cfssl's configuration)")
        if message == "no authentication provider":
            if own_policy:
                return TemplateCheck(asked, name, TemplateStatus.NOT_ENROLLABLE,
                                     f"{where} has profile {name!r} but it takes no authenticated requests (no "
                                     "auth_key), and certlc signs only through authsign",
                                     f"give profile {name!r} an auth_key in cfssl's configuration")
            return TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                                 f"{where} has no signing profile {name!r}",
                                 "check the name (and template_map) against signing.profiles in cfssl's configuration")
        return TemplateCheck(asked, name, TemplateStatus.UNVERIFIABLE,
                             f"{where} gave an unexpected answer for profile {name!r}: "
                             f"{message or 'no message'} (code {code})")

    def close(self) -> None:
        self._client.close()


def _auth_key(name: str, options: dict[str, Any]) -> bytes:
    if options.get("auth_key") and options.get("auth_key_env"):
        raise ConfigError(f"CA profile {name!r}: set auth_key or auth_key_env, not both", reason="CaProfileInvalid")
    if options.get("auth_key_env"):
        variable = str(options["auth_key_env"])
        value = os.environ.get(variable, "")
        where = f"environment variable {variable}"
        if not value:
            raise ConfigError(f"CA profile {name!r}: {where} (auth_key_env) is not set", reason="CaProfileInvalid")
    elif options.get("auth_key"):
        value, where = str(options["auth_key"]), "options.auth_key"
    else:
        raise ConfigError(f"CA profile {name!r} (cfssl) needs options.auth_key or options.auth_key_env",
                          reason="CaProfileInvalid")
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        key = b""
    if not key:  # never echo the value: it is the secret
        raise ConfigError(f"CA profile {name!r}: {where} is not a hex key", reason="CaProfileInvalid")
    return key


def from_profile(name: str, profile: CAProfile, settings: Settings) -> CfsslConnector:
    options = profile.options
    # Settings are unused: everything a cfssl connector needs sits in its CA profile.
    del settings
    check_options(name, KIND, options, {"auth_key", "auth_key_env", "ca_bundle", "label", "timeout_seconds"})
    endpoint = http_endpoint(name, KIND, profile.endpoint, "the cfssl API base URL, e.g. https://cfssl.example:8888")
    timeout = timeout_option(name, options, DEFAULT_TIMEOUT)
    return CfsslConnector(
        name,
        endpoint,
        _auth_key(name, options),
        template_map=profile.template_map,
        label=str(options["label"]) if options.get("label") else None,
        # No bundle: httpx's default trust (certifi), as before.
        verify=trust_context(name, options.get("ca_bundle")) or True,
        timeout=timeout,
    )
