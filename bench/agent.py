"""Requests and CPU per polling interval of ``certlc agent`` for 100 observed certificates (issue 5).

One run (a benchmark, not a test), everything on loopback:

  * the Key Vault emulator in its own process (``certlc.stack.start_emulator``), vault ``demo``;
  * 100 certificates seeded the fast way: Key Vault makes key and CSR, the dev CA signs, the
    worker principal merges; even ones ``application/x-pkcs12``, odd ones ``application/x-pem-file``;
  * agent settings observing all 100 (outputs ``pem``; every fourth also ``fullchain`` + ``key``),
    files into a temporary store, as the agent principal (Key Vault Secrets User).

Two forms of the agent are measured, each through the same three passes (first pass: installs
100; idle pass: nothing changed; after 10 renewals: installs 10):

  once   ``certlc agent --once`` as a subprocess (the cron / systemd-timer form). CPU is the
         child's user+sys from ``resource.getrusage(RUSAGE_CHILDREN)`` around ``subprocess.run``
         (so it includes interpreter start and imports, as cron would pay them).
  loop   ``Poller.poll_once()`` in this process, built as ``certlc agent`` builds it (the long-running
         form: one pass per interval, clients and token kept). CPU is ``time.process_time()``
         around the pass; the emulator runs in another process, so it is not counted.

Baselines, measured in the same run with the same identity, CA bundle and SDK: 100
``SecretClient.get_secret`` calls with no agent logic, once in a fresh subprocess (compare with
``once``) and once in this process with a fresh client (compare with ``loop``). Requests are
counted from the emulator's audit log (GETs by the agent principal; unauthenticated challenges).
These machines are noisy: read the ratios, not the absolute figures.

    python -m bench.agent [--certificates 100] [--renewals 10] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from certlc.stack import repository_root, start_emulator, stop_process

VAULT = "demo"
PFX = "application/x-pkcs12"
PEM = "application/x-pem-file"
CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]
AZURE_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                   "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS",
                   "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
                   "IDENTITY_ENDPOINT", "IDENTITY_HEADER")
RAW_SCRIPT = """
import json, sys
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient
args = json.loads(sys.argv[1])
client = SecretClient(args["url"], DefaultAzureCredential(managed_identity_client_id=args["client_id"]),
                      connection_verify=args["ca_bundle"], verify_challenge_resource=False)
for name in args["names"]:
    assert client.get_secret(name, retry_total=0).value
"""


@dataclass
class Measured:
    form: str  # once | loop | raw-subprocess | raw-in-process
    scenario: str  # first | idle | renewed | baseline
    wall_s: float
    cpu_s: float
    gets: int  # GETs by the agent principal
    challenges: int  # unauthenticated requests (Key Vault's 401 challenge)
    other: int  # anything else the agent principal sent
    installed: int | None = None


# --- the emulator and the vault --------------------------------------------------------------------

class Stack:
    """The emulator process, a worker-principal CertificateClient and a dev CA; ``stop()`` ends the emulator."""

    def __init__(self, root: Path) -> None:
        self.root = root
        state = root / "emulator"
        config = root / "certlc.toml"
        config.write_text(f'[emulator]\nport = 0\nidentity_port = 0\nvaults = ["{VAULT}"]\n'
                          f"state_dir = {json.dumps(str(state))}\n")
        self.state_dir = state
        self.proc, found = start_emulator(config, state, root / "emulator.log")
        from certlc.emulator import EmulatorEndpoints

        self.endpoints = EmulatorEndpoints(**found)
        self.url = self.endpoints.vault_urls[VAULT]
        # This process and every subprocess reach the emulator's managed identity, nothing else.
        for name in AZURE_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(self.endpoints.environment())

    def clients(self) -> None:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.certificates import CertificateClient

        from certlc.ca.devca import DevCA
        from certlc.config import DevCASettings

        credential = DefaultAzureCredential(managed_identity_client_id=self.endpoints.principals["worker"])
        self.certificates = CertificateClient(self.url, credential, connection_verify=self.endpoints.ca_bundle,
                                              verify_challenge_resource=False)
        self.ca = DevCA(self.root / "devca", DevCASettings().templates)

    def issue(self, name: str, content_type: str) -> str:
        """A new version: Key Vault makes the key and CSR, the dev CA signs, the worker merges."""
        from azure.keyvault.certificates import CertificatePolicy
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        policy = CertificatePolicy(issuer_name="Unknown", subject=f"CN={name}.contoso.com",
                                   san_dns_names=[f"{name}.contoso.com"], key_type="EC", key_curve_name="P-256",
                                   content_type=content_type)
        operation = self.certificates.begin_create_certificate(name, policy=policy, _polling_interval=0).result()
        csr = x509.load_der_x509_csr(bytes(operation.csr))
        template = self.ca.template("WebServer")
        assert template is not None
        cert = self.ca.sign(csr, template)
        merged = self.certificates.merge_certificate(
            name, [c.public_bytes(serialization.Encoding.DER) for c in [cert, *self.ca.chain]])
        assert merged.properties.version is not None
        return merged.properties.version

    def audit_length(self) -> int:
        from certlc.emulator import read_audit_log

        return len(read_audit_log(self.state_dir))

    def requests_since(self, start: int) -> tuple[int, int, int]:
        """(GETs of secrets by the agent principal, unauthenticated challenges, other agent requests)."""
        from certlc.emulator import read_audit_log

        records = read_audit_log(self.state_dir)[start:]
        gets = sum(1 for r in records if r.principal == "agent" and r.method == "GET" and r.path.startswith("/secrets/"))
        challenges = sum(1 for r in records if not r.principal)
        other = sum(1 for r in records if r.principal == "agent") - gets
        return gets, challenges, other

    def stop(self) -> None:
        stop_process(self.proc)


def content_type(index: int) -> str:
    return PFX if index % 2 == 0 else PEM


def write_settings(path: Path, stack: Stack, names: list[str], store: Path, state: Path) -> Path:
    observed: list[Any] = []
    for i, name in enumerate(names):
        url = f"{stack.url}/secrets/{name}"
        observed.append({"url": url, "certlc": {"outputs": ["pem", "fullchain", "key"]}} if i % 4 == 3 else url)
    path.write_text(json.dumps({
        "secretsManagementSettings": {"pollingIntervalInS": "3600", "certificateStoreLocation": str(store),
                                      "requireInitialSync": True, "observedCertificates": observed},
        "authenticationSettings": {"msiClientId": stack.endpoints.principals["agent"]},
        "certlc": {"ca_bundle": stack.endpoints.ca_bundle, "state_dir": str(state)},
    }, indent=2))
    return path


# --- measuring ------------------------------------------------------------------------------------

def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def quiet_azure_logs() -> Iterator[None]:
    import logging

    logger = logging.getLogger("azure")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_subprocess(stack: Stack, form: str, scenario: str, cmd: list[str]) -> tuple[Measured, str]:
    start = stack.audit_length()
    cpu0, wall0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=repository_root())
    wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{form} {scenario}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    gets, challenges, other = stack.requests_since(start)
    installed = proc.stdout.count(": Installed") if form == "once" else None
    return Measured(form, scenario, wall, cpu, gets, challenges, other, installed), proc.stdout


def run_in_process(stack: Stack, form: str, scenario: str, work: Callable[[], int | None]) -> Measured:
    start = stack.audit_length()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    installed = work()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    gets, challenges, other = stack.requests_since(start)
    return Measured(form, scenario, wall, cpu, gets, challenges, other, installed)


def median_of(runs: list[Measured]) -> Measured:
    """The run with the median CPU time (requests are the same in every run, or the table shows it)."""
    ordered = sorted(runs, key=lambda m: m.cpu_s)
    picked = ordered[len(ordered) // 2]
    return Measured(picked.form, picked.scenario, statistics.median(m.wall_s for m in runs),
                    statistics.median(m.cpu_s for m in runs), picked.gets, picked.challenges, picked.other,
                    picked.installed)


def benchmark(count: int, renewals: int, repeat: int, root: Path) -> list[Measured]:
    stack = Stack(root)
    try:
        return _measure(stack, count, renewals, repeat, root)
    finally:
        stack.stop()


def _measure(stack: Stack, count: int, renewals: int, repeat: int, root: Path) -> list[Measured]:
    from certlc.agent.deploy import deploy
    from certlc.agent.poll import Outcome, Poller, sdk_secret_getter
    from certlc.agent.settings import load_agent_settings

    stack.clients()
    names = [f"bench-{i:03d}" for i in range(count)]
    started = time.perf_counter()
    for i, name in enumerate(names):
        stack.issue(name, content_type(i))
    print(f"seeded {count} certificates ({count // 2 + count % 2} PFX, {count // 2} PEM) in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    results: list[Measured] = []
    agent_id = stack.endpoints.principals["agent"]

    # Baselines: 100 get_secret calls, nothing else.
    raw_args = json.dumps({"url": stack.url, "client_id": agent_id, "ca_bundle": stack.endpoints.ca_bundle,
                           "names": names})
    results.append(median_of([run_subprocess(stack, "raw-subprocess", "baseline",
                                             [sys.executable, "-c", RAW_SCRIPT, raw_args])[0]
                              for _ in range(repeat)]))

    def raw_in_process() -> None:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        client = SecretClient(stack.url, DefaultAzureCredential(managed_identity_client_id=agent_id),
                              connection_verify=stack.endpoints.ca_bundle, verify_challenge_resource=False)
        for name in names:
            assert client.get_secret(name, retry_total=0).value

    with quiet_azure_logs():
        results.append(median_of([run_in_process(stack, "raw-in-process", "baseline", raw_in_process)
                                  for _ in range(repeat)]))

    # once: certlc agent --once, a new process per interval.
    once_config = write_settings(root / "once.json", stack, names, root / "store-once", root / "state-once")
    once = [*CLI, "agent", "--config", str(once_config), "--once"]
    results.append(run_subprocess(stack, "once", "first", once)[0])
    results.append(median_of([run_subprocess(stack, "once", "idle", once)[0] for _ in range(repeat)]))

    # loop: the long-running agent's poller, one pass per interval in this process.
    loop_config = write_settings(root / "loop.json", stack, names, root / "store-loop", root / "state-loop")
    settings = load_agent_settings(loop_config)
    poller = Poller(settings, sdk_secret_getter(settings), deploy=deploy)

    def one_pass() -> int:
        report = poller.poll_once()
        if not report.ok:
            raise SystemExit(f"loop pass not ok: { {k: v for k, v in report.outcomes.items() if v != 'Unchanged'} }")
        return sum(1 for o in report.outcomes.values() if o == Outcome.INSTALLED)

    with quiet_azure_logs():
        results.append(run_in_process(stack, "loop", "first", one_pass))
        results.append(median_of([run_in_process(stack, "loop", "idle", one_pass) for _ in range(repeat)]))

    # 10 renewals: a new version of every tenth certificate, then one pass of each form.
    for i in range(0, count, max(1, count // renewals))[:renewals]:
        stack.issue(names[i], content_type(i))
    results.append(run_subprocess(stack, "once", "renewed", once)[0])
    with quiet_azure_logs():
        results.append(run_in_process(stack, "loop", "renewed", one_pass))
    return results


# --- report ---------------------------------------------------------------------------------------

def find(results: list[Measured], form: str, scenario: str) -> Measured:
    return next(m for m in results if m.form == form and m.scenario == scenario)


def table(results: list[Measured]) -> str:
    base = {"once": find(results, "raw-subprocess", "baseline"), "loop": find(results, "raw-in-process", "baseline")}
    lines = ["| form | pass | wall s | CPU s | GETs | challenges | other | installed | wall / raw | CPU / raw |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in results:
        raw = base.get(m.form)
        ratios = (f"{m.wall_s / raw.wall_s:.2f} | {m.cpu_s / raw.cpu_s:.2f}" if raw and raw.cpu_s and raw.wall_s
                  else "- | -")
        installed = "-" if m.installed is None else str(m.installed)
        lines.append(f"| {m.form} | {m.scenario} | {m.wall_s:.2f} | {m.cpu_s:.2f} | {m.gets} | {m.challenges} | "
                     f"{m.other} | {installed} | {ratios} |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {platform.processor() or platform.machine()}, "
            f"CPython {platform.python_version()}, {platform.platform()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=100)
    parser.add_argument("--renewals", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the idle pass and baselines (median)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="certlc-bench-agent-") as tmp:
        results = benchmark(args.certificates, args.renewals, args.repeat, Path(tmp))
    print(f"machine: {machine()}")
    print(f"{args.certificates} observed certificates, {args.renewals} renewed; idle and baselines: "
          f"median of {args.repeat}")
    print(table(results))
    idle = find(results, "once", "idle")
    target = idle.gets == args.certificates and idle.challenges == 1 and idle.other == 0
    print(f"idle pass (--once): {idle.gets} GETs + {idle.challenges} challenge(s), other {idle.other}: "
          f"target {args.certificates} GETs + 1 challenge {'met' if target else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": [asdict(m) for m in results]}, indent=2))


if __name__ == "__main__":
    main()
