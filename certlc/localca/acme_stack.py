"""The local ACME CA of ``certlc up --ca acme``: a real Pebble, pebble-challtestsrv as the DNS its
validation authority asks (every name resolves to 127.0.0.1), and a plain web server on Pebble's
http-01 port serving a webroot the connector writes its tokens into — the way certlc answers
http-01 in production behind nginx or IIS. Pebble validates every challenge for real.

The webroot, not the connector's built-in responder, because the worker runs each renewal in its
own process: several renewals at once could not all listen on the one port Pebble dials.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from certlc.localca.select import LocalCaPlan, Started
from certlc.stack import _spawn, _tcp_open, free_port, wait_until

__all__ = ["plan_acme"]

VALIDITY_DAYS = 90  # as Let's Encrypt issues (the demo's report expects it)


def plan_acme(folder: Path, table: Callable[..., str]) -> LocalCaPlan:
    from certlc.localca.pebble import start_challtestsrv, start_pebble

    port, http_port = free_port(), free_port()
    webroot = folder / "webroot"
    webroot.mkdir(parents=True, exist_ok=True)
    pebble_dir = folder / "pebble"
    directory = f"https://127.0.0.1:{port}/dir"

    def start(config: Path, logs: Path) -> list[Started]:
        del config
        started: list[Started] = []
        try:
            dns = start_challtestsrv(folder / "challtestsrv")
            started.append(Started("challtestsrv", dns.proc, f"tcp://127.0.0.1:{dns.dns_server.rsplit(':', 1)[1]}",
                                   dns.log_path))
            web = _spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(webroot),
                          str(http_port)], logs / "acme-webroot.log")
            wait_until(web, _tcp_open(http_port), "the http-01 webroot server", logs / "acme-webroot.log", 30)
            started.append(Started("acme-webroot", web, f"tcp://127.0.0.1:{http_port}", logs / "acme-webroot.log"))
            pebble = start_pebble(pebble_dir, dns_server=dns.dns_server, http_port=http_port, port=port,
                                  validity_days=VALIDITY_DAYS)
            started.append(Started("pebble", pebble.proc, f"tcp://127.0.0.1:{port}", pebble.log_path))
        except BaseException:
            from certlc.stack import stop_process

            for part in started:
                stop_process(part.proc)
            raise
        return started

    options = {"challenge": "http-01", "webroot": str(webroot), "email": "pki@contoso.com",
               "ca_bundle": str(pebble_dir / "tls" / "tls-ca.pem")}
    return LocalCaPlan("acme", "acme", table("acme", "acme", directory, options), {}, start)
