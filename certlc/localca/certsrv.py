"""The AD CS web-enrollment simulator as a server process on loopback (HTTPS, Windows auth).

``certlc up --ca adcs-web`` (and so ``make demo CA=adcs-web``) runs it: the dev CA behind the
certsrv HTML contract (``certlc.ca.certsrv_sim``), with its own TLS CA, IIS's Windows
Authentication (NTLM, with Extended Protection: the TLS channel binding is required) for one
service account whose password comes from the environment (never the command line), and the
worker renews through the ``adcs-web`` connector exactly as it would against a real AD CS (its
profile reads the same password from a 0600 file, ``password_file``: see
``certlc.localca.select``).

Run as ``python -m certlc.localca.certsrv --devca DIR --port N --tls-dir DIR --user NAME``
with the password in ``$CERTLC_CERTSRV_PASSWORD``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from certlc.errors import CertlcError
from certlc.localca.tls import localhost_tls
from certlc.stack import _spawn, free_port, wait_until

__all__ = ["PASSWORD_ENV", "LocalCertsrv", "main", "start_certsrv"]

PASSWORD_ENV = "CERTLC_CERTSRV_PASSWORD"  # noqa: S105 - the variable's name, not a password
USER = "CONTOSO\\svc-certlc"


@dataclass(frozen=True)
class LocalCertsrv:
    endpoint: str  # https://127.0.0.1:<port>/certsrv
    ca_bundle: Path
    user: str
    password: str
    proc: subprocess.Popen[bytes]


def start_certsrv(devca_dir: Path, folder: Path, log: Path, *, port: int | None = None,
                  password: str | None = None, config: Path | None = None, timeout: float = 60) -> LocalCertsrv:
    """Start the simulator serving the dev CA in ``devca_dir`` (its templates from ``config``'s
    [devca] section); returns once it answers over TLS."""
    tls = localhost_tls(folder, "certsrv simulator")
    port = port or free_port()
    password = password or secrets.token_urlsafe(18)
    cmd = [sys.executable, "-m", "certlc.localca.certsrv", "--devca", str(devca_dir), "--port", str(port),
           "--tls-dir", str(folder), "--user", USER]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = _spawn(cmd, log, {PASSWORD_ENV: password})
    endpoint = f"https://127.0.0.1:{port}/certsrv"

    trust = ssl.create_default_context(cafile=str(tls.ca_pem))

    def ready() -> bool:  # any answer over trusted TLS (401 included) means it is serving
        return httpx.get(endpoint + "/", verify=trust, timeout=2).status_code in (200, 401)

    wait_until(proc, ready, "the AD CS web enrollment simulator", log, timeout)
    return LocalCertsrv(endpoint, tls.ca_pem, USER, password, proc)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from certlc.ca.certsrv_sim import certsrv_app
    from certlc.ca.devca import DevCA
    from certlc.config import DevCASettings

    parser = argparse.ArgumentParser(prog="python -m certlc.localca.certsrv", description=__doc__.splitlines()[0])
    parser.add_argument("--devca", type=Path, required=True, help="the dev CA's state directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--user", default=USER)
    parser.add_argument("--config", type=Path, help="certlc.toml whose [devca] templates to serve")
    parser.add_argument("--auth", choices=("basic", "ntlm", "negotiate"), default="ntlm")
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise SystemExit(f"set {PASSWORD_ENV} to the service account's password")
    if args.config:
        from certlc.config import load_settings

        settings = load_settings(args.config)
        devca = settings.devca
    else:
        devca = DevCASettings()
    ca = DevCA(args.devca, devca.templates, devca.common_name)
    tls = localhost_tls(args.tls_dir, "certsrv simulator")
    from cryptography import x509

    server_cert = x509.load_pem_x509_certificate(tls.cert_pem.read_bytes())
    app = certsrv_app(ca, users={args.user: password}, auth=args.auth,
                      channel_binding_certificate=server_cert if args.auth != "basic" else None)
    uvicorn.run(app, host="127.0.0.1", port=args.port,
                ssl_certfile=str(tls.cert_pem), ssl_keyfile=str(tls.key_pem), log_level="warning",
                access_log=False, log_config=None)


if __name__ == "__main__":
    try:
        main()
    except CertlcError as exc:
        raise SystemExit(exc.message) from None
