"""``certlc up`` / ``certlc down`` / ``certlc ps``: the local stack on loopback."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from certlc.cli._app import exit_with_error
from certlc.errors import CertlcError

__all__ = ["down", "ps", "up"]

DEFAULT_ROOT = Path(".certlc/stack")
StateDir = Annotated[Path, Parameter(help="Where the stack keeps its state, config and logs.")]


def up(
    *,
    state_dir: StateDir = DEFAULT_ROOT,
    detach: Annotated[bool, Parameter(help="Start the parts and return; `certlc down` stops them.")] = False,
    drain_interval: Annotated[int, Parameter(help="Seconds between queue drains (local schedule).")] = 10,
    ca: Annotated[Literal["devca", "adcs-web", "cfssl", "acme"], Parameter(
        help="The CA vault 'demo' renews through: the dev CA in-process, the AD CS web enrollment "
             "simulator (HTTPS, basic auth), a real cfssl serve, or a real Pebble (ACME).")] = "devca",
) -> None:
    """Start the whole local stack: Azurite, the Key Vault emulator with Event Grid delivery, a
    Prefect server, the deployments of prefect.yaml, a worker, the webhook receiver, an SMTP sink,
    and the CA chosen with --ca.

    Runs until Ctrl-C (or SIGTERM), then stops every part; with --detach it returns at once.
    """
    from certlc.up import stop_all
    from certlc.up import up as start

    def progress(message: str) -> None:
        print(f"certlc up: {message}", file=sys.stderr, flush=True)

    try:
        info, procs = start(state_dir, progress=progress, detach=detach, drain_interval_seconds=drain_interval, ca=ca)
    except CertlcError as exc:
        exit_with_error(exc.message, 2 if exc.reason == "StackRunning" else 1)
    _print_summary(info)
    if detach:
        return
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print("Press Ctrl-C to stop the stack.", flush=True)
        while not stop.wait(0.5):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                progress(f"a part exited (pid {dead[0].pid}, code {dead[0].returncode}); stopping the stack")
                break
    finally:
        progress("stopping ...")
        stop_all(procs)
        (state_dir.resolve() / "stack.json").unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_summary(info: object) -> None:
    from certlc.up import StackInfo

    assert isinstance(info, StackInfo)
    lines = [f"certlc up: running from {info.root}",
             f"  config:        {info.config}",
             f"  Prefect UI:    {info.api.removesuffix('/api')}",
             f"  webhook:       {info.webhook_url}  (key in the config file)"]
    lines += [f"  {p.name:<14} pid {p.pid:<7} {p.health}" for p in info.parts]
    lines += [f"  logs:          {Path(info.root) / 'logs'}",
              "To use it from another shell (the identity header is in " + str(Path(info.root) / "stack.json") + "):",
              f"  export CERTLC_CONFIG={info.config} PREFECT_API_URL={info.api}",
              f"  export IDENTITY_ENDPOINT={info.env['IDENTITY_ENDPOINT']} IDENTITY_HEADER=<from stack.json>"]
    print("\n".join(lines), flush=True)


def down(*, state_dir: StateDir = DEFAULT_ROOT) -> None:
    """Stop the local stack started with `certlc up --detach` (or left behind by a crash)."""
    from certlc.up import down as stop

    stopped = stop(state_dir)
    print(f"certlc down: stopped {', '.join(stopped)}" if stopped else "certlc down: nothing was running")


def ps(
    *,
    state_dir: StateDir = DEFAULT_ROOT,
    json_output: Annotated[bool, Parameter(name="--json", help="Print as JSON.")] = False,
) -> None:
    """Show each part of the local stack: running, healthy, its log. Exit 1 if any part is not healthy."""
    from certlc.up import ps as status

    rows = status(state_dir)
    if json_output:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"certlc ps: no stack recorded in {state_dir} (start one with `certlc up`)")
    else:
        for row in rows:
            state = "healthy" if row["healthy"] else ("running, not answering" if row["running"] else "stopped")
            print(f"{row['name']:<15} pid {row['pid']:<7} {state:<24} {row['log']}")
    raise SystemExit(0 if rows and all(r["healthy"] for r in rows) else 1)
