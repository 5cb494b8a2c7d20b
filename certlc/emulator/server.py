"""Start and stop the emulator: one HTTPS port per vault plus the identity endpoint.

:func:`start_in_thread` binds every port first (so a port in use fails at once, in the caller),
then runs all uvicorn servers on one event loop in a daemon thread and returns when they all
listen. ``<state>/endpoints.json`` (mode 0600, it holds the identity header) says where
everything is; :func:`read_endpoints` reads it back for another process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from certlc.config import EmulatorSettings
from certlc.emulator.admin_api import admin_routes
from certlc.emulator.audit import AuditLog, AuditRecord, read_audit_log
from certlc.emulator.clock import EmulatorClock, describe_offset, parse_offset
from certlc.emulator.identity import IDENTITY_PATH, TokenIssuer, identity_app
from certlc.emulator.keyvault import vault_app
from certlc.emulator.publisher import EventPublisher
from certlc.emulator.sealing import MasterKey, Sealer
from certlc.emulator.senders import describe
from certlc.emulator.store import VaultStore
from certlc.emulator.tls import TlsFiles, ensure_tls
from certlc.emulator.vault import Vault, check_name
from certlc.errors import ConfigError
from certlc.files import PRIVATE_FILE_MODE, atomic_write, ensure_private_dir

__all__ = ["ENDPOINTS_FILE", "EmulatorEndpoints", "EmulatorHandle", "read_endpoints", "start_in_thread"]

logger = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = "emulator.lock"
STARTUP_TIMEOUT = 30.0
GRACEFUL_SHUTDOWN = 2  # seconds uvicorn waits for open requests when stopping


@dataclass(frozen=True)
class EmulatorEndpoints:
    """Where a running emulator listens and how to authenticate to it."""

    vault_urls: dict[str, str]  # vault name -> https://localhost:port
    identity_endpoint: str  # http://127.0.0.1:port/msi/token  (IDENTITY_ENDPOINT)
    identity_header: str = field(repr=False)  # the X-IDENTITY-HEADER secret (IDENTITY_HEADER)
    ca_bundle: str  # path of the local root PEM
    principals: dict[str, str]  # principal name -> client id

    def environment(self) -> dict[str, str]:
        """The variables that make azure-identity's managed identity use this emulator."""
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmulatorEndpoints:
        data: dict[str, Any] = json.loads(text)
        return cls(
            vault_urls=dict(data["vault_urls"]),
            identity_endpoint=data["identity_endpoint"],
            identity_header=data["identity_header"],
            ca_bundle=data["ca_bundle"],
            principals=dict(data["principals"]),
        )


class EmulatorHandle:
    """A running emulator: ``endpoints`` to reach it, ``stop()`` to end it (idempotent)."""

    def __init__(
        self,
        endpoints: EmulatorEndpoints,
        state_dir: Path,
        runner: _Runner,
        lock: _StateLock,
        clock: EmulatorClock | None = None,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.state_dir = state_dir
        self.clock = clock or EmulatorClock()  # shared by every vault; shift with set_offset()
        self.publisher = publisher  # Event Grid subscriptions (stats, scan, pause)
        self._runner = runner
        self._lock = lock

    def audit_log(self) -> list[AuditRecord]:
        return read_audit_log(self.state_dir)

    def stop(self, timeout: float = 10.0) -> None:
        if self.publisher is not None:
            self.publisher.stop()  # first: no event scan may read a vault being shut down
        self._runner.stop(timeout)
        (self.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)  # not running any more
        self._lock.release()

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_endpoints(state_dir: Path) -> EmulatorEndpoints:
    """The endpoints of the emulator running on ``state_dir`` (ConfigError when none is)."""
    path = Path(state_dir) / ENDPOINTS_FILE
    try:
        return EmulatorEndpoints.from_json(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no emulator is running on {state_dir} ({path} does not exist)",
                          reason="EmulatorNotRunning") from None


def start_in_thread(settings: EmulatorSettings, state_dir: Path) -> EmulatorHandle:
    """Start the emulator on ``state_dir`` in a background thread; return once it listens."""
    _check(settings)
    state_dir = ensure_private_dir(Path(state_dir).resolve())
    lock = _StateLock(state_dir / LOCK_FILE)
    try:
        return _start(settings, state_dir, lock)
    except ValueError as exc:  # damaged state: unreadable JSON, a foreign schema, a bad master key
        lock.release()
        raise ConfigError(f"the emulator state in {state_dir} is unusable: {exc}",
                          reason="EmulatorStateDamaged") from exc
    except BaseException:
        lock.release()
        raise


def _start(settings: EmulatorSettings, state_dir: Path, lock: _StateLock) -> EmulatorHandle:
    master = MasterKey.load_or_create(state_dir)
    tls = ensure_tls(state_dir, master)
    sealer = Sealer(master.fernet("store"))
    issuer = TokenIssuer(master.fernet("tokens"), settings.principals)
    identity_header = base64.urlsafe_b64encode(master.derive("identity-header", 24)).decode("ascii")
    audit = AuditLog(state_dir)

    host = _loopback_address(settings.host)
    ports = [settings.port + i if settings.port else 0 for i in range(len(settings.vaults))]
    sockets: list[socket.socket] = []
    try:
        for port in [*ports, settings.identity_port]:
            sockets.append(_bind(host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    vault_sockets, identity_socket = sockets[:-1], sockets[-1]

    servers: list[uvicorn.Server] = []
    vault_urls = {
        name: f"https://localhost:{sock.getsockname()[1]}"
        for name, sock in zip(settings.vaults, vault_sockets, strict=True)
    }
    vaults: list[Vault] = []
    try:
        clock = EmulatorClock(parse_offset(settings.clock_offset))
        publisher = EventPublisher(settings, state_dir, clock, vault_urls)
        for name in settings.vaults:
            vault = Vault(name, VaultStore(state_dir / "vaults" / f"{name}.json", sealer), clock=clock,
                          on_new_version=publisher.version_created)
            vaults.append(vault)
            servers.append(_server(vault_app(vault, issuer, audit), tls))
        admin = admin_routes(clock, publisher, identity_header)
        servers.append(_server(identity_app(issuer, identity_header, admin), None))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    url_host = f"[{host}]" if ":" in host else host
    endpoints = EmulatorEndpoints(
        vault_urls=vault_urls,
        identity_endpoint=f"http://{url_host}:{identity_socket.getsockname()[1]}{IDENTITY_PATH}",
        identity_header=identity_header,
        ca_bundle=str(tls.ca_bundle),
        principals=dict(settings.principals),
    )

    runner = _Runner(list(zip(servers, sockets, strict=True)))
    handle = EmulatorHandle(endpoints, state_dir, runner, lock, clock, publisher)
    failure = runner.start(STARTUP_TIMEOUT)
    if failure is not None:
        handle.stop()
        raise ConfigError(f"the emulator did not start: {failure}", reason="EmulatorStartFailed")
    atomic_write(state_dir / ENDPOINTS_FILE, endpoints.to_json())
    publisher.start(vaults)
    logger.info(
        "Key Vault emulator listening: %s; identity endpoint %s; CA bundle %s; clock offset %s",
        ", ".join(f"{n} {u}" for n, u in vault_urls.items()), endpoints.identity_endpoint, tls.ca_bundle,
        describe_offset(clock.offset_seconds),
    )
    for sub in settings.subscriptions:
        logger.info("Event Grid subscription %s: %s", sub.name, describe(sub))
    return handle


class _Runner:
    """All servers on one event loop in a daemon thread."""

    def __init__(self, pairs: list[tuple[uvicorn.Server, socket.socket]]) -> None:
        self._pairs = pairs
        self._ready = threading.Event()
        self._failures: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="certlc-emulator", daemon=True)

    def start(self, timeout: float) -> str | None:
        """Start serving; None once every server listens, else why not."""
        self._thread.start()
        if not self._ready.wait(timeout):
            return "timed out"
        if self._failures:
            return f"{type(self._failures[0]).__name__}: {self._failures[0]}"
        if not all(server.started for server, _ in self._pairs):
            return "a server stopped during startup"
        return None

    def stop(self, timeout: float) -> None:
        servers = [server for server, _ in self._pairs]
        for server in servers:
            server.should_exit = True
        deadline = time.monotonic() + timeout
        # Let requests in flight finish, then drop idle keep-alive connections at once: a
        # graceful TLS close waits for the client's close_notify, which an idle pooled
        # client never sends (uvicorn would wait out its whole graceful-shutdown timeout).
        while any(s.server_state.tasks for s in servers) and time.monotonic() < deadline:
            time.sleep(0.02)
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(_abort_connections, servers)
            self._thread.join(0.05)
        if self._thread.is_alive():
            for server in servers:
                server.force_exit = True
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread; a daemon must not die silently
            self._failures.append(exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in self._pairs]
        while not all(server.started for server, _ in self._pairs) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        self._ready.set()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                self._failures.append(result)


def _abort_connections(servers: list[uvicorn.Server]) -> None:
    for server in servers:
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


def _server(app: Any, tls: TlsFiles | None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        ssl_certfile=str(tls.certfile) if tls else None,
        ssl_keyfile=str(tls.keyfile) if tls else None,
        ssl_keyfile_password=tls.key_password if tls else None,
        # Logging: no access log (paths are in the audit log; tokens are never logged anywhere),
        # and no uvicorn logging config of its own that would take over the host's.
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        http="h11",
        ws="none",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    config.load()  # fails here, in the caller's thread, on a bad key password or certificate
    return uvicorn.Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":  # restart on the same port while old connections sit in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the emulator cannot listen on {host}:{port}: {exc.strerror}",
                          reason="PortUnavailable") from None
    sock.set_inheritable(False)
    return sock


def _loopback_address(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ConfigError(
        f"emulator.host {host!r} is not a loopback address; the emulator serves tokens over plain http "
        "and must stay on this machine", reason="ConfigInvalid",
    )


def _check(settings: EmulatorSettings) -> None:
    if not settings.vaults:
        raise ConfigError("emulator.vaults is empty; name at least one vault", reason="ConfigInvalid")
    lowered = [v.lower() for v in settings.vaults]
    if len(set(lowered)) != len(lowered):
        raise ConfigError(f"emulator.vaults has duplicate names: {settings.vaults}", reason="ConfigInvalid")
    for name in settings.vaults:
        try:
            check_name(name, "vault")
        except Exception:
            raise ConfigError(f"emulator vault name {name!r} must use only 0-9, a-z, A-Z and '-'",
                              reason="ConfigInvalid") from None
    if not settings.principals:
        raise ConfigError("emulator.principals is empty; name at least one principal", reason="ConfigInvalid")
    subscriptions = [s.name.upper() for s in settings.subscriptions]
    if len(set(subscriptions)) != len(subscriptions):
        # Upper-cased names key the dead-letter folders and aeg-subscription-name: they must differ.
        raise ConfigError(f"emulator.subscriptions has duplicate names: {[s.name for s in settings.subscriptions]}",
                          reason="ConfigInvalid")
    if settings.port and settings.port + len(settings.vaults) - 1 > 65535:
        raise ConfigError(f"emulator.port {settings.port} leaves no room for {len(settings.vaults)} vault ports",
                          reason="ConfigInvalid")


class _StateLock:
    """One emulator per state directory: an exclusive lock on ``<state>/emulator.lock``."""

    def __init__(self, path: Path) -> None:
        # Held open for the emulator's lifetime; the lock dies with the process if it crashes.
        self._handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE), "r+")
        try:
            _lock_file(self._handle)
        except OSError:
            self._handle.close()
            raise ConfigError(f"another emulator is already running on {path.parent}",
                              reason="EmulatorAlreadyRunning") from None
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            with contextlib.suppress(OSError):
                _unlock_file(self._handle)
            self._handle.close()


if os.name == "posix":
    import fcntl

    def _lock_file(handle: Any) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_file(handle: Any) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

else:  # Windows
    import msvcrt

    def _lock_file(handle: Any) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(handle: Any) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
