"""Maps a CA profile's ``kind`` to the connector that serves it (cert-manager's IssuerFor)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from certlc.ca.base import CAConnector
from certlc.config import CAProfile, Settings
from certlc.errors import ConfigError

__all__ = ["connector_for", "known_kinds", "register"]

Factory = Callable[[str, CAProfile, Settings], CAConnector]

_FACTORIES: dict[str, Factory] = {}


def register(kind: str, factory: Factory) -> None:
    _FACTORIES[kind] = factory


def _builtin() -> None:
    from certlc.ca import acme, certreq, certsrv, cfssl, devca

    register("devca", devca.from_profile)
    register("cfssl", cfssl.from_profile)
    register("certreq", certreq.from_profile)  # AD CS through certreq.exe, on a Windows worker
    register("adcs-web", certsrv.from_profile)  # AD CS web enrollment (certsrv)
    register("acme", acme.from_profile)


def _plugins() -> None:
    # Third-party connectors arrive through an entry-point group and must import without extras.
    for ep in entry_points(group="certlc.ca"):
        if ep.name not in _FACTORIES:
            register(ep.name, ep.load())


_loading = threading.Lock()
_loaded = False


def known_kinds() -> list[str]:
    global _loaded
    with _loading:  # sweep threads may ask at once; load the registry exactly once
        if not _loaded:
            _builtin()
            _plugins()
            _loaded = True
    return list(_FACTORIES)  # registration order: the built-in devca first, then cfssl, then plugins


def connector_for(profile_name: str, settings: Settings) -> CAConnector:
    """Build the connector for CA profile ``profile_name``; ConfigError names what is wrong."""
    try:
        profile = settings.ca_profiles[profile_name]
    except KeyError:
        raise ConfigError(
            f"CA profile {profile_name!r} is not defined (defined: {', '.join(sorted(settings.ca_profiles))})",
            reason="CaProfileMissing",
        ) from None
    kinds = known_kinds()
    if profile.kind not in _FACTORIES:
        raise ConfigError(
            f"CA profile {profile_name!r} has kind {profile.kind!r}, which is not a known connector "
            f"(known: {', '.join(kinds)})",
            reason="CaKindUnknown",
        )
    return _FACTORIES[profile.kind](profile_name, profile, settings)
