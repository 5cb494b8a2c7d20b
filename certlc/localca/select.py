"""Which CA the local stack renews through: one value (``certlc up --ca``, ``make demo CA=...``).

``devca`` signs in the worker's process; ``adcs-web`` runs the AD CS web-enrollment simulator
over HTTPS with NTLM (Extended Protection on), the password in a 0600 file the profile names
(``password_file``); ``cfssl`` runs a real ``cfssl serve``; ``acme`` runs a real Pebble (with
pebble-challtestsrv as its DNS) and answers http-01 from a webroot served on loopback.
Each gives the CA profile's TOML and starts its servers once the configuration exists.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from certlc.config import TemplateSpec
from certlc.files import PRIVATE_FILE_MODE, atomic_write
from certlc.stack import free_port

__all__ = ["LOCAL_CAS", "LocalCaPlan", "Started", "plan_local_ca"]

LOCAL_CAS = ("devca", "adcs-web", "cfssl", "acme")


@dataclass(frozen=True)
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    health: str  # http(s)://... or tcp://127.0.0.1:port, for `certlc ps`
    log: Path


@dataclass
class LocalCaPlan:
    kind: str
    profile: str  # the CA profile's name in certlc.toml
    profile_toml: str  # its [ca_profiles."..."] table
    env: dict[str, str] = field(default_factory=dict)  # what the worker needs (never on a command line)
    start: Callable[[Path, Path], list[Started]] = lambda config, logs: []


def _table(name: str, kind: str, endpoint: str | None, options: dict[str, object],
           template_map: dict[str, str] | None = None) -> str:
    lines = [f"[ca_profiles.{json.dumps(name)}]", f"kind = {json.dumps(kind)}"]
    if endpoint:
        lines.append(f"endpoint = {json.dumps(endpoint)}")
    if template_map:
        lines.append("template_map = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}"
                                                     for k, v in template_map.items()) + " }")
    if options:
        lines.append("options = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + " }")
    return "\n".join(lines) + "\n"


def plan_local_ca(kind: str, root: Path, templates: list[TemplateSpec]) -> LocalCaPlan:
    """The plan for CA ``kind`` with state under ``root / "localca"``; ValueError for an unknown kind."""
    folder = root / "localca" / kind
    if kind == "devca":
        return LocalCaPlan(kind, "devca", _table("devca", "devca", None, {}))
    if kind == "adcs-web":
        from certlc.localca.certsrv import USER, start_certsrv
        from certlc.localca.tls import localhost_tls

        port, password = free_port(), secrets.token_urlsafe(18)
        tls = localhost_tls(folder, "certsrv simulator")
        endpoint = f"https://127.0.0.1:{port}/certsrv"
        # v2 templates are named by their OID in the certificate; AD CS wants the common name.
        names = {t.oid: t.name for t in templates if t.oid}

        def start_adcs(config: Path, logs: Path) -> list[Started]:
            site = start_certsrv(root / "devca", folder, logs / "certsrv.log", port=port, password=password,
                                 config=config)
            return [Started("certsrv", site.proc, f"tcp://127.0.0.1:{port}", logs / "certsrv.log")]

        # The password sits in a 0600 file the profile names (password_file), so every certlc
        # command run with the stack's certlc.toml (`certlc ca check`, `certlc renew` from another
        # shell) finds it, not only the worker; the simulator gets it from its environment.
        password_file = folder / "certsrv-password"
        atomic_write(password_file, password + "\n", PRIVATE_FILE_MODE)
        # NTLM over HTTPS with the channel binding IIS's Extended Protection requires, as a real
        # certsrv is set up (a domain-joined worker would use negotiate with its own ticket).
        options = {"auth": "ntlm", "username": USER, "password_file": str(password_file),
                   "ca_bundle": str(tls.ca_pem)}
        return LocalCaPlan(kind, "adcs-web", _table("adcs-web", "adcs-web", endpoint, options, names),
                           {}, start_adcs)
    if kind == "cfssl":
        from certlc.localca.cfssl import start_cfssl

        port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / "auth-key.hex"
        if not key_file.exists():
            atomic_write(key_file, secrets.token_hex(16), PRIVATE_FILE_MODE)
        endpoint = f"http://127.0.0.1:{port}"
        names = {t.oid: t.name for t in templates if t.oid}  # a v2 OID -> the cfssl profile of that name

        def start_cfssl_part(config: Path, logs: Path) -> list[Started]:
            server = start_cfssl(folder, templates, logs / "cfssl.log", port=port)
            return [Started("cfssl", server.proc, f"tcp://127.0.0.1:{port}", logs / "cfssl.log")]

        options = {"auth_key": key_file.read_text().strip()}
        return LocalCaPlan(kind, "cfssl", _table("cfssl", "cfssl", endpoint, options, names), {}, start_cfssl_part)
    if kind == "acme":
        from certlc.localca.acme_stack import plan_acme

        return plan_acme(folder, _table)
    raise ValueError(f"unknown local CA {kind!r} (choose from: {', '.join(LOCAL_CAS)})")
