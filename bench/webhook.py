"""Throughput and latency of the Event Grid receiver on loopback, in one run (a benchmark, not a test).

Scenarios, each served by uvicorn in its own process, one at a time (the load generator runs in
this process, so on a small machine client and server share the cores: nothing is pinned):

  baseline    a bare Starlette app answering POST /api/events with 200 ``{}`` after reading the
              body: the bound for this HTTP stack (uvicorn, Starlette, httpx client) on this machine;
  null-sink   ``certlc.webhook.create_app`` with a sink that does nothing: shared key, content
              type, size limit, parse, validate, vault allow-list;
  real-sink   ``certlc webhook`` itself: each event goes on an Azurite queue and starts the
              renew-certificate deployment on a real Prefect server (prefect.yaml deployed; no
              worker, so the runs it creates stay Scheduled).

Every request is a distinct, valid Event Grid delivery (a one-element array holding a
CertificateNearExpiry event with a unique id) carrying the shared key as ``?key=``. After the
load, the real sink's parts are profiled: one call at a time from this process (queue send,
``run_deployment``, a persistent Prefect client), and inside a receiver whose sink is wrapped with
timers, under the same concurrency.

    python -m bench.webhook [--concurrency 16] [--events 2000] [--real-events 500] [--json out.json]

The Prefect server it starts has its late-runs service off (``--late-runs`` keeps it): with no
worker, marking hundreds of runs Late competes for SQLite's write lock with the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from certlc.stack import (
    azurite_connection_string,
    deploy,
    free_port,
    local_prefect_yaml,
    prefect_command,
    repository_root,
    start_azurite,
    start_prefect_server,
    stop_process,
    wait_until,
)

TARGET_RATE = 300.0  # accepted events per second
TARGET_P99_MS = 100.0
EVENT_GRID_TIMEOUT = 30.0  # seconds Event Grid waits for a webhook's answer
POOL = "certlc-hybrid"
SCENARIOS = ("baseline", "null-sink", "real-sink")
VAULT_NAME = "contoso-certs"
VAULT_URL = f"https://{VAULT_NAME}.vault.azure.net"
TOPIC = f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{VAULT_NAME}"
NEAR_EXPIRY = "Microsoft.KeyVault.CertificateNearExpiry"
# What Event Grid sends with a webhook delivery (Event Grid schema).
HEADERS = {"content-type": "application/json; charset=utf-8", "aeg-event-type": "Notification",
           "aeg-subscription-name": "CERTLC-WEBHOOK", "aeg-delivery-count": "0", "aeg-data-version": "1",
           "aeg-metadata-version": "1"}
CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]


# --- events ---------------------------------------------------------------------------------------

def near_expiry_event(index: int) -> dict[str, Any]:
    """A realistic Key Vault CertificateNearExpiry event (Event Grid schema) with a unique id."""
    name = f"web{index % 97:02d}"
    version = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(days=29, hours=index % 24)
    return {
        "id": str(uuid.uuid4()), "topic": TOPIC, "subject": name, "eventType": NEAR_EXPIRY,
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "data": {"Id": f"{VAULT_URL}/certificates/{name}/{version}", "VaultName": VAULT_NAME,
                 "ObjectType": "Certificate", "ObjectName": name, "Version": version,
                 "NBF": int((expires - dt.timedelta(days=365)).timestamp()), "EXP": int(expires.timestamp())},
        "dataVersion": "1", "metadataVersion": "1",
    }


def deliveries(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps([near_expiry_event(start + i)], separators=(",", ":")).encode() for i in range(count)]


# --- statistics -----------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Latencies:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latencies:
        values = sorted(seconds)
        ms = [v * 1000 for v in values]
        return cls(len(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99),
                   ms[-1] if ms else 0.0, sum(ms) / len(ms) if ms else 0.0)


@dataclass
class LoadResult:
    scenario: str
    events: int
    accepted: int
    seconds: float
    accepted_per_second: float
    latency: Latencies
    failures: dict[str, int] = field(default_factory=dict)  # status code or exception -> count
    vs_baseline: float | None = None
    meets_target: bool | None = None  # None for the baseline (not a receiver)
    prefect_503: int | None = None  # "database is locked" answers of the Prefect server during the run


# --- servers --------------------------------------------------------------------------------------

@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM while a part starts (the starters of certlc.stack only hand the
    process back once it answers), then act on it: no part is ever left running unrecorded."""
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


class Processes:
    """Every process this run started; ``stop()`` ends them in reverse order."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # Own session: a Ctrl-C in the terminal reaches only this script, which stops the servers.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, cwd=repository_root(),
                                    start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)
        with contextlib.suppress(ValueError):
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def _healthy(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


def start_receiver(procs: Processes, kind: str, config: Path, log: Path,
                   env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Serve one scenario on a free loopback port; (process, base URL) once /healthz answers."""
    port = free_port()
    if kind == "real-sink":
        cmd = [*CLI, "webhook", "--config", str(config), "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "bench.webhook", "--serve", kind, "--config", str(config), "--port", str(port)]
    proc = procs.spawn(cmd, log, env)
    base = f"http://127.0.0.1:{port}"
    wait_until(proc, _healthy(f"{base}/healthz"), f"the {kind} receiver", log, timeout=120)
    return proc, base


def serve(kind: str, config: Path, port: int) -> None:
    """The server side of one scenario (run in a subprocess by ``start_receiver``)."""
    import logging

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    # As `certlc webhook` does: INFO lines per accepted event are part of the receiver's cost.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    if kind == "baseline":
        async def events(request: Request) -> Response:
            await request.body()
            return JSONResponse({})

        app = Starlette(routes=[Route("/api/events", events, methods=["POST"]),
                                Route("/healthz", health, methods=["GET"])])
    else:
        from certlc.config import load_settings
        from certlc.webhook import create_app

        settings = load_settings(config)
        if kind == "null-sink":
            app = create_app(settings, NullSink())
        elif kind == "timed-sink":
            timings, sink = timed_sink(settings)
            app = create_app(settings, sink)

            async def read_timings(request: Request) -> Response:
                if request.method == "DELETE":
                    for values in timings.values():
                        values.clear()
                return JSONResponse({name: list(values) for name, values in timings.items()})

            app.add_route("/bench/timings", read_timings, methods=["GET", "DELETE"])
        else:
            raise SystemExit(f"unknown scenario {kind!r}")
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_config=None, timeout_graceful_shutdown=5)


class NullSink:
    """Accepts every event and does nothing with it."""

    def accept(self, events: Sequence[Any]) -> None:
        return None


def timed_sink(settings: Any) -> tuple[dict[str, list[float]], Any]:
    """The sink `certlc webhook` builds, with a timer around each part (seconds per call)."""
    from certlc.queue import RenewalQueue, queue_clients
    from certlc.webhook.sink import DeploymentStarter, RenewalSink

    timings: dict[str, list[float]] = {"queue.send": [], "run_deployment": [], "sink.accept": []}

    def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - started)  # list.append: thread-safe
        return wrapper

    queue = RenewalQueue(*queue_clients(settings), settings.queue)
    queue.ensure()
    queue.send = timed("queue.send", queue.send)  # type: ignore[method-assign]
    starter = DeploymentStarter(settings.webhook.deployment)
    starter.start = timed("run_deployment", starter.start)  # type: ignore[method-assign]
    sink = RenewalSink(starter, queue)
    sink.accept = timed("sink.accept", sink.accept)  # type: ignore[method-assign]
    return timings, sink


# --- load -----------------------------------------------------------------------------------------

async def fire(client: httpx.AsyncClient, url: httpx.URL, bodies: Sequence[bytes], concurrency: int,
               rate: float | None = None) -> tuple[list[float], int, Counter[str], float]:
    """POST every body, ``concurrency`` at a time: (latencies, 200 count, failures, wall seconds).

    Closed loop (as fast as answers come) by default; with ``rate``, request i is due at
    i / rate seconds (at most ``concurrency`` in flight) and its latency counts from when it was
    due, so a stalled server is not flattered by the requests it kept from being sent."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    accepted = 0
    pending = iter(enumerate(bodies))
    begin = time.perf_counter()

    async def worker() -> None:
        nonlocal accepted
        for index, body in pending:  # one iterator shared by the workers (one thread: no race)
            started = time.perf_counter()
            if rate:
                due = begin + index / rate
                if due > started:
                    await asyncio.sleep(due - started)
                started = due
            try:
                response = await client.post(url, content=body, headers=HEADERS)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                accepted += 1
            else:
                failures[f"HTTP {response.status_code}"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, accepted, failures, time.perf_counter() - begin


async def drive(base: str, key: str, *, events: int, warmup: int, concurrency: int, rate: float | None = None,
                before_measure: Callable[[], None] | None = None) -> tuple[list[float], int, Counter[str], float]:
    url = httpx.URL(f"{base}/api/events", params={"key": key})
    warm, measured = deliveries(warmup), deliveries(events, start=warmup)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Event Grid waits 30 s for an answer, then counts the delivery as failed and delivers again.
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(EVENT_GRID_TIMEOUT)) as client:
        _, _, warm_failures, _ = await fire(client, url, warm, concurrency)
        if warm_failures:
            print(f"    warm-up failures: {dict(warm_failures)}", flush=True)
        if before_measure is not None:
            before_measure()
        return await fire(client, url, measured, concurrency, rate)


def load(scenario: str, base: str, key: str, *, events: int, warmup: int, concurrency: int,
         rate: float | None = None) -> LoadResult:
    pace = f"offered at {rate:.0f}/s, " if rate else ""
    print(f"  {scenario}: {warmup} warm-up + {events} events, {pace}concurrency {concurrency} ...", flush=True)
    latencies, accepted, failures, seconds = asyncio.run(
        drive(base, key, events=events, warmup=warmup, concurrency=concurrency, rate=rate))
    name = f"{scenario} @{rate:.0f}/s" if rate else scenario
    result = LoadResult(name, events, accepted, seconds, accepted / seconds, Latencies.of(latencies),
                        dict(failures))
    if scenario != "baseline":
        # Paced: keeping up with the offered rate is what counts (accepted/s cannot exceed it).
        rate_needed = TARGET_RATE * 0.98 if rate else TARGET_RATE
        result.meets_target = (not failures and result.accepted_per_second >= rate_needed
                               and result.latency.p99_ms < TARGET_P99_MS)
    return result


# --- the real sink's stack ------------------------------------------------------------------------

def write_config(path: Path, *, key: str, state_dir: Path, queue_connection_string: str | None) -> Path:
    queue = (f"\n[queue]\nconnection_string = {json.dumps(queue_connection_string)}\n"
             if queue_connection_string else "enqueue = false\n")
    path.write_text(f"""# certlc configuration for bench/webhook.py (throw-away).
state_dir = {json.dumps(str(state_dir))}

[[vaults]]
name = "contoso"
url = "{VAULT_URL}"
ca_profile = "adcs"

[ca_profiles.adcs]
kind = "adcs-web"
endpoint = "https://ca01.contoso.com/certsrv"

[webhook]
host = "127.0.0.1"
shared_key = {json.dumps(key)}
{queue}""")
    path.chmod(0o600)
    return path


def start_real_stack(procs: Processes, work: Path, logs: Path, *, late_runs: bool) -> tuple[str, str]:
    """Azurite + a Prefect server with prefect.yaml deployed: (queue connection string, API URL).

    Without a worker every created run stays Scheduled, so the server's late-runs service would
    mark them all Late 15 s on (one state row each, in bursts that hold SQLite's write lock and
    stall the receiver's inserts: "database is locked" in the server log). That is an artefact of
    the benchmark (a worker takes runs before they are late), so it is off unless ``late_runs``.
    """
    # Read by start_prefect_server's child (it inherits this environment).
    if not late_runs:
        os.environ["PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"] = "false"
    # A SQLite write conflict is answered 503 (and retried by the client after 2, 4, 8, 16 s) without
    # a log line; log them, so that the run can count them.
    os.environ["PREFECT_SERVER_LOG_RETRYABLE_ERRORS"] = "true"
    print("  starting Azurite ...", flush=True)
    with deferred_interrupts():
        azurite, queue_port = start_azurite(repository_root(), logs / "azurite.log")
        procs.running.append(azurite)
    print("  starting the Prefect server (SQLite) ...", flush=True)
    with deferred_interrupts():
        server, api = start_prefect_server(work / "prefect", logs / "prefect-server.log")
        procs.running.append(server)
    env = prefect_env(work, api)
    print(f"  creating work pool {POOL} and deploying prefect.yaml ...", flush=True)
    with (logs / "deploy.log").open("ab") as out:
        subprocess.run([*prefect_command(), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                       stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, timeout=120, check=True)
    deploy(local_prefect_yaml(work / "prefect.yaml", working_directory=repository_root()), env, logs / "deploy.log")
    os.environ["PREFECT_API_URL"] = api  # this process's Prefect client (profile), in every thread
    return azurite_connection_string(queue_port), api


RETRYABLE = "Encountered retryable exception in request"


class LogCounter:
    """Counts the lines holding ``needle`` that a log gained since ``mark()``."""

    def __init__(self, path: Path, needle: str) -> None:
        self.path, self.needle, self.offset = path, needle.encode(), 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def count(self) -> int:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().count(self.needle)


def prefect_env(work: Path, api: str) -> dict[str, str]:
    return {"PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_COLORS": "false"}


# --- profile of the real sink ---------------------------------------------------------------------

@dataclass
class CallProfile:
    call: str
    latency: Latencies
    where: str  # "sequential" (from this process, one call at a time) or "in receiver" (under load)


def profile_sequential(config: Path, api: str, calls: int) -> list[CallProfile]:
    """Each part of the real sink alone, one call at a time from this process."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from certlc.config import load_settings
    from certlc.events import parse_event
    from certlc.queue import RenewalQueue, queue_clients
    from certlc.webhook import AcceptedEvent
    from certlc.webhook.sink import DeploymentStarter, RenewalSink, renewal_parameters

    settings = load_settings(config)
    vault = settings.vaults[0]
    name = settings.webhook.deployment
    counter = iter(range(10**9))

    def next_item() -> AcceptedEvent:
        event = parse_event(near_expiry_event(next(counter)))
        return AcceptedEvent(event, vault)  # type: ignore[arg-type]

    def measure(label: str, call: Callable[[AcceptedEvent], Any], warmup: int = 5) -> CallProfile:
        print(f"    {label} x {calls} ...", flush=True)
        for _ in range(warmup):
            call(next_item())
        seconds = []
        for _ in range(calls):
            item = next_item()
            started = time.perf_counter()
            call(item)
            seconds.append(time.perf_counter() - started)
        return CallProfile(label, Latencies.of(seconds), "sequential")

    results: list[CallProfile] = []
    with temporary_settings(updates={PREFECT_API_URL: api}):
        queue = RenewalQueue(*queue_clients(settings), settings.queue)
        queue.ensure()
        starter = DeploymentStarter(name)
        results.append(measure("RenewalQueue.send", lambda item: queue.send(dict(item.event.raw))))
        results.append(measure("run_deployment(timeout=0, idempotency_key=...)", lambda item: run_deployment(
            name, parameters=renewal_parameters(item), timeout=0, idempotency_key=item.event.id, as_subflow=False)))
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(name).id
            results.append(measure("  persistent client: read_deployment_by_name",
                                   lambda item: client.read_deployment_by_name(name)))
            results.append(measure("  persistent client: create_flow_run_from_deployment (cached id)",
                                   lambda item: client.create_flow_run_from_deployment(
                                       deployment_id, parameters=renewal_parameters(item),
                                       idempotency_key=item.event.id)))
        sink = RenewalSink(starter, queue)
        results.append(measure("RenewalSink.accept (queue + run_deployment)", lambda item: sink.accept([item])))
    return results


def profile_in_receiver(procs: Processes, config: Path, env: dict[str, str], key: str, logs: Path, *,
                        events: int, warmup: int, concurrency: int) -> tuple[list[CallProfile], LoadResult]:
    """The real sink's parts timed inside a receiver (the sink `certlc webhook` builds, wrapped
    with timers) while it serves the same load."""
    proc, base = start_receiver(procs, "timed-sink", config, logs / "receiver-timed-sink.log", env)
    try:
        def reset() -> None:
            httpx.delete(f"{base}/bench/timings", timeout=10).raise_for_status()

        print(f"  timed real sink: {warmup} warm-up + {events} events at concurrency {concurrency} ...", flush=True)
        latencies, accepted, failures, seconds = asyncio.run(drive(
            base, key, events=events, warmup=warmup, concurrency=concurrency, before_measure=reset))
        timings = httpx.get(f"{base}/bench/timings", timeout=10).json()
    finally:
        procs.stop(proc)
    result = LoadResult("real-sink (timed)", events, accepted, seconds, accepted / seconds, Latencies.of(latencies),
                        dict(failures))
    calls = [CallProfile(name, Latencies.of(values), "in receiver") for name, values in timings.items()]
    calls.append(CallProfile("HTTP request, as the client sees it", result.latency, "in receiver"))
    return calls, result


# --- report ---------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for package in ("uvicorn", "starlette", "httpx", "prefect", "azure-storage-queue", "uvloop", "httptools"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {"cores": os.cpu_count(), "usable_cores": usable, "cpu": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "packages": versions}


def load_table(results: Sequence[LoadResult]) -> str:
    head = (f"{'scenario':<20} {'events':>6} {'non-200':>7} {'accepted/s':>10} {'p50 ms':>8} {'p90 ms':>8} "
            f"{'p99 ms':>8} {'max ms':>8} {'vs base':>7}  target")
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.vs_baseline:.2f}" if r.vs_baseline is not None else "-"
        target = "-" if r.meets_target is None else ("meets" if r.meets_target else "MISSES")
        lines.append(f"{r.scenario:<20} {r.events:>6} {sum(r.failures.values()):>7} {r.accepted_per_second:>10.1f} "
                     f"{r.latency.p50_ms:>8.1f} {r.latency.p90_ms:>8.1f} {r.latency.p99_ms:>8.1f} "
                     f"{r.latency.max_ms:>8.1f} {ratio:>7}  {target}")
    return "\n".join(lines)


def profile_table(calls: Sequence[CallProfile]) -> str:
    head = f"{'where':<12} {'call':<66} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8}"
    lines = [head, "-" * len(head)]
    for c in calls:
        lines.append(f"{c.where:<12} {c.call:<66} {c.latency.count:>5} {c.latency.p50_ms:>8.2f} "
                     f"{c.latency.p99_ms:>8.2f} {c.latency.mean_ms:>8.2f} {c.latency.max_ms:>8.1f}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------

def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="certlc-bench-webhook-"))
    logs = work / "logs"
    logs.mkdir()
    # This process's Prefect client (the profile) must not touch the user's ~/.prefect.
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    info = machine()
    print(f"certlc webhook benchmark: logs in {logs}")
    print(f"machine: {info['cores']} cores ({info['usable_cores']} usable) {info['cpu']}; "
          f"{info['implementation']} {info['python']}; {info['platform']}")
    print(f"stack: uvicorn {info['packages']['uvicorn']} (uvloop {info['packages']['uvloop'] or 'absent'}, "
          f"httptools {info['packages']['httptools'] or 'absent'}), starlette {info['packages']['starlette']}, "
          f"httpx {info['packages']['httpx']} client, prefect {info['packages']['prefect']}")
    print("load generator and servers share this machine's cores (nothing pinned)", flush=True)
    key = secrets.token_urlsafe(24)
    procs = Processes()
    results: list[LoadResult] = []
    profile: list[CallProfile] = []
    signal.signal(signal.SIGTERM, _terminate)
    try:
        plain_config = write_config(work / "certlc-null.toml", key=key, state_dir=work / "state",
                                    queue_connection_string=None)
        for scenario in ("baseline", "null-sink"):
            if scenario not in scenarios:
                continue
            proc, base = start_receiver(procs, scenario, plain_config, logs / f"receiver-{scenario}.log")
            try:
                results.append(load(scenario, base, key, events=args.events, warmup=args.warmup,
                                    concurrency=args.concurrency))
                if scenario == "null-sink" and args.paced_rate > 0:
                    results.append(load(scenario, base, key, events=args.events, warmup=args.warmup,
                                        concurrency=args.concurrency, rate=args.paced_rate))
            finally:
                procs.stop(proc)
        if "real-sink" in scenarios:
            connection_string, api = start_real_stack(procs, work, logs, late_runs=args.late_runs)
            env = prefect_env(work, api)
            config = write_config(work / "certlc.toml", key=key, state_dir=work / "state",
                                  queue_connection_string=connection_string)
            locked = LogCounter(logs / "prefect-server.log", RETRYABLE)
            proc, base = start_receiver(procs, "real-sink", config, logs / "receiver-real-sink.log", env)
            try:
                locked.mark()
                results.append(load("real-sink", base, key, events=args.real_events, warmup=args.real_warmup,
                                    concurrency=args.concurrency))
                results[-1].prefect_503 = locked.count()
            finally:
                procs.stop(proc)
            if args.profile_calls > 0:
                print("  profiling the real sink, one call at a time from this process ...", flush=True)
                profile += profile_sequential(config, api, args.profile_calls)
            if args.profile_events > 0:
                locked.mark()
                in_receiver, timed = profile_in_receiver(
                    procs, config, env, key, logs, events=args.profile_events, warmup=args.real_warmup,
                    concurrency=args.concurrency)
                timed.prefect_503 = locked.count()
                profile += in_receiver
                results.append(timed)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what this run started ...", file=sys.stderr, flush=True)
        return 130
    finally:
        procs.stop_all()

    baseline = next((r for r in results if r.scenario == "baseline"), None)
    for r in results:
        if baseline is not None and r is not baseline and "@" not in r.scenario:  # paced rows: rate imposed
            r.vs_baseline = r.accepted_per_second / baseline.accepted_per_second
    print()
    print(f"target for a receiver: >= {TARGET_RATE:.0f} accepted events/s with p99 < {TARGET_P99_MS:.0f} ms and "
          f"no non-200 answer (concurrency {args.concurrency}, one event per delivery, loopback; a request "
          f"unanswered after {EVENT_GRID_TIMEOUT:.0f} s, Event Grid's timeout, counts as non-200). Rows without "
          "@rate are closed loop (latency at saturation); '@N/s' rows offer N events/s")
    print(load_table(results))
    for r in results:
        if r.prefect_503 is not None:
            print(f"{r.scenario}: the Prefect server answered 503 (SQLite 'database is locked') {r.prefect_503} "
                  "time(s), warm-up included; its client retried each after 2, 4, 8, 16 s")
    if profile:
        print()
        print("where a real-sink request's time goes (per call, ms):")
        print(profile_table(profile))
    for r in results:
        if r.failures:
            print(f"NON-200 in {r.scenario}: {r.failures} (see {logs})")
    print(f"\nlogs: {logs}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "concurrency": args.concurrency,
            "warmup": {"baseline_and_null_sink": args.warmup, "real_sink": args.real_warmup},
            "target": {"accepted_per_second": TARGET_RATE, "p99_ms": TARGET_P99_MS},
            "scenarios": [asdict(r) for r in results], "profile": [asdict(c) for c in profile],
            "logs": str(logs)}, indent=2))
        print(f"numbers written to {args.json}")
    # A 503 under overload is the receiver doing its job (Event Grid delivers again); anything
    # else that is not a 200 — a 4xx, a timeout past Event Grid's 30 s — is a defect.
    defects = [k for r in results for k in r.failures if k != "HTTP 503"]
    return 1 if defects else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--events", type=int, default=2000, help="measured events, baseline and null sink (default 2000)")
    parser.add_argument("--real-events", type=int, default=500, help="measured events, real sink (default 500)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="warm-up events, baseline and null sink, not measured (default 200)")
    parser.add_argument("--real-warmup", type=int, default=50,
                        help="warm-up events, real sink, not measured (default 50)")
    parser.add_argument("--profile-calls", type=int, default=100,
                        help="sequential calls per real-sink part in the profile; 0 skips it (default 100)")
    parser.add_argument("--profile-events", type=int, default=200,
                        help="events through the timed real sink; 0 skips it (default 200)")
    parser.add_argument("--paced-rate", type=float, default=TARGET_RATE,
                        help=f"also offer the null sink this many events/s (open loop; 0 skips; default {TARGET_RATE:.0f})")
    parser.add_argument("--late-runs", action="store_true",
                        help="keep the Prefect server's late-runs service on (off by default: no worker takes the runs)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    # The server side of a scenario, run by this script in a subprocess.
    parser.add_argument("--serve", choices=("baseline", "null-sink", "timed-sink"), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.config, args.port)
        return 0
    if args.concurrency < 1 or args.events < 1 or args.real_events < 1 or min(args.warmup, args.real_warmup) < 0:
        parser.error("--concurrency, --events and --real-events must be >= 1, the warm-ups >= 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
