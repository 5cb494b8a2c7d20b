"""Entra ID bearer tokens on Event Grid deliveries ("secure webhook delivery").

With ``webhook.entra`` set, every delivery (and the CloudEvents ``OPTIONS`` handshake) must carry
both the shared key and ``Authorization: Bearer <JWT>`` issued by Entra ID; the receiver checks the
key first, so only callers that know it can make certlc fetch signing keys. Setting it up:

1. Register an app for the webhook in the tenant (``tenant_id``), give it an application id URI
   (say ``api://certlc-webhook``) and an app role ``AzureEventGridSecureWebhookSubscriber``
   (allowed member type: applications).
2. Assign that role to Event Grid's first-party service principal (app id
   ``4962773b-9cdb-44cf-a8bf-237846a00ab7`` in the public cloud) — Microsoft's
   secure-webhook-delivery scripts do this — and, for subscriptions created by a user or an app,
   to that creator as well.
3. Create the event subscription with ``azureActiveDirectoryTenantId`` = the tenant and
   ``azureActiveDirectoryApplicationIdOrUri`` = the app id or its id URI. Event Grid then asks
   Entra ID for a token whose ``aud`` is exactly that value.
4. Configure certlc::

       webhook:
         shared_key: ...
         entra:
           tenant_id: <tenant guid>
           audience: api://certlc-webhook   # exactly what the subscription names (app id or id URI)
           # issuers: [...]                 # default: the tenant's v1 and v2 issuers
           # jwks_url: ...                  # default: the tenant's v2.0 discovery keys
           # required_role: AzureEventGridSecureWebhookSubscriber   # "" accepts any caller of the tenant
           # leeway_seconds: 60

What is checked: the signature, with a key from the tenant's JWKS and an asymmetric algorithm only
(never ``none`` or ``HS*``, so a token "signed" with the public key as an HMAC secret is refused);
``aud`` equal to the configured audience; ``iss`` one of the accepted issuers; ``exp``/``nbf``/``iat``
within the leeway; ``roles`` containing ``required_role`` when one is set. A refusal is a
:class:`TokenRejected` with a plain ``reason`` (401); a JWKS endpoint that cannot be read is
:class:`KeysUnavailable` (503, so Event Grid delivers again). Neither ever carries the token.

Signing keys are cached (``cache_seconds``); a token naming an unknown ``kid`` triggers a refetch,
but at most one fetch per ``min_refresh_seconds``, so a flood of made-up key ids cannot hammer the
JWKS endpoint. When a fetch fails, keys already cached keep working. :meth:`BearerVerifier.verify`
blocks on network I/O (call it from a thread) and is thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from certlc.config import EntraSettings

__all__ = ["ASYMMETRIC_ALGORITHMS", "BearerError", "BearerVerifier", "KeysUnavailable", "TokenRejected"]

log = logging.getLogger("certlc.webhook")

# Signature algorithms a token may use: public-key ones only (no "none", no HS256/384/512).
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


class BearerError(Exception):
    """A delivery's bearer token could not be accepted; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenRejected(BearerError):
    """The token is missing or not valid for this webhook (answer 401)."""


class KeysUnavailable(BearerError):
    """The signing keys could not be fetched, so the token could not be checked (answer 503)."""

    def __init__(self, reason: str = "JWKS unreachable") -> None:
        super().__init__(reason)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class BearerVerifier:
    """Checks Entra ID bearer tokens against one :class:`EntraSettings`."""

    def __init__(self, settings: EntraSettings, *, cache_seconds: float = 3600, min_refresh_seconds: float = 30,
                 timeout: float = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.audience = settings.audience
        self.issuers = frozenset(settings.accepted_issuers)
        self.required_role = settings.required_role or None
        self.leeway = settings.leeway_seconds
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        # PyJWKClient fetches and parses the JWKS; the cache and the refetch limit are ours, so that
        # they behave the same on every PyJWT 2.x and are guarded by one lock.
        self._client = jwt.PyJWKClient(settings.keys_url, cache_jwk_set=False, timeout=timeout)
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # kid -> jwt.PyJWK
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._last_failed = False
        self.fetches = 0  # JWKS fetch attempts, for tests and metrics

    # -- keys -----------------------------------------------------------------------------------

    def _fetch(self) -> None:
        """Replace the cached keys with the endpoint's (caller holds the lock)."""
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            keys = self._client.get_signing_keys(refresh=True)
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            self._last_failed = True
            log.error("webhook: could not fetch signing keys from %s: %s", self.settings.keys_url,
                      type(exc).__name__)
            raise KeysUnavailable() from None
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._fetched_at = self._clock()
        self._last_failed = False
        log.info("webhook: fetched %d signing key(s) from %s", len(self._keys), self.settings.keys_url)

    def signing_key(self, kid: str) -> Any:
        """The cached or freshly fetched key for ``kid`` (a ``jwt.PyJWK``)."""
        with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self.cache_seconds
            cached = self._keys.get(kid)
            if cached is not None and fresh:
                return cached
            may_fetch = self._last_attempt is None or now - self._last_attempt >= self.min_refresh_seconds
            if may_fetch:
                try:
                    self._fetch()
                except KeysUnavailable:
                    if cached is not None:  # the endpoint is down: a key we already know still works
                        return cached
                    raise
                key = self._keys.get(kid)
                if key is None:
                    raise TokenRejected("signing key unknown")
                return key
            if cached is not None:
                return cached
            if self._last_failed or self._fetched_at is None:
                raise KeysUnavailable()
            raise TokenRejected("signing key unknown")

    # -- tokens ---------------------------------------------------------------------------------

    def verify_header(self, authorization: str | None) -> Mapping[str, Any]:
        """Verify the token of an ``Authorization`` header value; see :meth:`verify`."""
        token = bearer_token(authorization)
        if token is None:
            raise TokenRejected("missing bearer token")
        return self.verify(token)

    def verify(self, token: str) -> Mapping[str, Any]:
        """The token's claims, or :class:`TokenRejected` / :class:`KeysUnavailable`. Blocking."""
        if not token:
            raise TokenRejected("missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise TokenRejected("bad signature")  # "none", HS*: never accepted, whatever the key
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("signing key unknown")
        key = self.signing_key(kid)
        jwk_alg = getattr(key, "_jwk_data", {}).get("alg")
        if jwk_alg and jwk_alg != alg:
            raise TokenRejected("bad signature")
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=self.audience, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            reason = {"aud": "wrong audience", "iss": "untrusted issuer"}.get(exc.claim, "malformed token")
            raise TokenRejected(reason) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise TokenRejected("bad signature") from None
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        if claims.get("iss") not in self.issuers:
            raise TokenRejected("untrusted issuer")
        if self.required_role is not None:
            roles = claims.get("roles")
            if not isinstance(roles, list) or self.required_role not in roles:
                raise TokenRejected("role missing")
        return claims
