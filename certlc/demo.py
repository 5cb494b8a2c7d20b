"""``certlc demo``: the main job end to end on the local stack, driven by Key Vault's events.

It starts the local stack (``certlc up``: Azurite, the Key Vault emulator with Event Grid
delivery, a Prefect server with prefect.yaml deployed, a worker, the webhook receiver, an SMTP
sink), seeds a vault with certificates issued by the dev CA (two template styles, RSA and EC
keys, SAN sets taken from real certificates in the field corpus, Recipient tags, lifetimes so
that some are expired, some near expiry and some far from it), moves the emulator's clock 25
days ahead so Key Vault sends its near-expiry events, and waits while the webhook starts the
renewals and the worker runs them. Then it checks every promise (one new version per certificate
in Key Vault's window with the same subject, SANs, key and template and the expiry extended by
the template's validity; nothing else touched; a sweep afterwards renews nothing) and prints the
result.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.keyvault.certificates import CertificateClient, CertificatePolicy, KeyCurveName, KeyType
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certlc.ca.devca import DevCA
from certlc.config import CLIENT_AUTH, SERVER_AUTH, Settings, TemplateSpec, load_settings
from certlc.errors import CertlcError
from certlc.stack import CLI
from certlc.vault import desired_sans, read_certificate
from certlc.x509 import dns_a_label, template_of

__all__ = ["DEMO_CERTIFICATES", "DEMO_TEMPLATES", "DemoCertificate", "issue", "local_config_text", "run_demo", "seed",
           "write_config"]

DAY = dt.timedelta(days=1)

DEMO_TEMPLATES = [
    TemplateSpec(name="WebServer", validity_days=730, ekus=[SERVER_AUTH]),
    TemplateSpec(
        name="WebServerShort",
        oid="1.3.6.1.4.1.311.21.8.7638725.13898300.1985460.3383425.7519116.119.16408497.1716615",
        major=100, minor=4, validity_days=90, ekus=[SERVER_AUTH, CLIENT_AUTH],
    ),
    # The AD CS "User" template: client authentication, secure e-mail and EFS; v1.
    TemplateSpec(name="User", validity_days=365,
                 ekus=["1.3.6.1.4.1.311.10.3.4", "1.3.6.1.5.5.7.3.4", CLIENT_AUTH],
                 key_usages=["digitalSignature", "keyEncipherment"]),
]


@dataclass(frozen=True)
class DemoCertificate:
    name: str
    subject: str
    sans: dict[str, list[str]]  # Key Vault policy fields: dns_names, ip_addresses, emails, upns, uris
    key: tuple[str, int | str]  # ("RSA", 2048) or ("EC", "P-256")
    template: str
    lifetime_days: int
    remaining_days: float  # negative: already expired
    recipients: str
    source: str  # where the SAN set comes from


# SAN sets are taken from real certificates in ../shared/corpus (named in ``source``). The IDN
# set keeps the raw UTF-8 names next to their punycode forms, as the field certificate does; Key
# Vault is asked for A-labels only, de-duplicated.
DEMO_CERTIFICATES = [
    DemoCertificate("web-stackoverflow", "CN=stackoverflow.com",
                    {"dns_names": ["*.stackoverflow.com", "stackoverflow.com"]}, ("EC", "P-256"),
                    "WebServerShort", 90, 12, "web-team@contoso.com; pki@contoso.com",
                    "acme-le-stackoverflow-leaf-e8-chain.pem"),
    DemoCertificate("idn-biztositas", "CN=partner.biztositas.hu,O=Biztositas Zrt,C=HU",
                    {"dns_names": ["partner.biztositas.hu", "biztositas.hu", "*.biztositas.hu", "biztosítás.hu",
                                   "*.biztosítás.hu", "xn--biztosts-fza2j.hu", "*.xn--biztosts-fza2j.hu"]},
                    ("RSA", 2048), "WebServer", 730, -3, "hu-ops@contoso.com", "pyca-utf8-idn-dnsname.pem"),
    DemoCertificate("user-cert-admin", "CN=cert_admin,OU=ADCS,DC=tombwatcher,DC=htb",
                    {"upns": ["cert_admin@tombwatcher.htb"]}, ("RSA", 2048), "User", 365, 200,
                    "identity@contoso.com", "certipy-user-template-nopass.pfx"),
    DemoCertificate("cryptography-io", "CN=www.cryptography.io",
                    {"dns_names": ["www.cryptography.io", "cryptography.io"]}, ("RSA", 4096), "WebServer",
                    730, 400, "docs@contoso.com", "pyca-chain-with-garbage.pem"),
    DemoCertificate("sub-cryptography-io", "CN=cryptography.io,O=My Organization,C=US",
                    {"dns_names": ["cryptography.io", "sub.cryptography.io"]}, ("RSA", 3072), "WebServer",
                    730, 20, "docs@contoso.com,docs@contoso.com", "pyca-csr-san-rsa.pem"),
    DemoCertificate("intranet-ip", "CN=intranet.contoso.local,O=Contoso",
                    {"dns_names": ["intranet.contoso.local"], "ip_addresses": ["10.20.30.40", "2001:db8::40"]},
                    ("EC", "P-384"), "WebServerShort", 90, 5, "netops@contoso.com",
                    "IP SANs as AD CS web-server certificates for intranet hosts carry them"),
    DemoCertificate("api-gateway", "CN=api.contoso.com,O=Contoso,C=US",
                    {"dns_names": ["api.contoso.com", "api-internal.contoso.com"],
                     "uris": ["spiffe://contoso.com/gateway"], "emails": ["api-owners@contoso.com"]},
                    ("EC", "P-521"), "WebServerShort", 90, 75, "api@contoso.com", "URI/e-mail SAN set"),
    DemoCertificate("legacy-expired", "CN=legacy.contoso.com",
                    {"dns_names": ["legacy.contoso.com", "www.legacy.contoso.com"]}, ("RSA", 2048),
                    "WebServer", 730, -40, "legacy@contoso.com", "acme-le-stackoverflow-leaf-e8-chain.pem shape"),
    DemoCertificate("portal-contoso", "CN=portal.contoso.com",
                    {"dns_names": ["portal.contoso.com"]}, ("EC", "P-256"), "WebServerShort", 90, 45,
                    "portal@contoso.com", "single-name web server"),
]

# What each local CA can issue again as it was. ACME validates DNS names only (http-01 here, so no
# wildcards) and names the subject after an identifier; cfssl 1.2 copies DNS and IP SANs and the
# usual subject attributes but neither UPNs, URIs nor domain components. The dev CA and AD CS
# (its web-enrollment simulator) issue all of them.
_STAMPS_TEMPLATES = {"devca", "adcs-web"}
ACME_VALIDITY_DAYS = 90  # what the local Pebble is told to issue


def issuable(spec: DemoCertificate, kind: str) -> bool:
    """Whether the local CA ``kind`` can renew ``spec`` keeping its subject and SANs."""
    kinds = set(spec.sans)
    if kind == "acme":
        names = spec.sans.get("dns_names", [])
        return kinds == {"dns_names"} and not any("*" in n or not n.isascii() for n in names) \
            and spec.subject.startswith("CN=") and spec.subject[3:] in names and "," not in spec.subject
    if kind == "cfssl":
        return not kinds & {"upns", "uris", "emails"} and "DC=" not in spec.subject
    return True


def demo_certificates(kind: str = "devca") -> list[DemoCertificate]:
    return [spec for spec in DEMO_CERTIFICATES if issuable(spec, kind)]


_CURVES = {"P-256": KeyCurveName.p_256, "P-384": KeyCurveName.p_384, "P-521": KeyCurveName.p_521}


def _policy(spec: DemoCertificate) -> CertificatePolicy:
    kty, param = spec.key
    return CertificatePolicy(
        issuer_name="Unknown",
        subject=spec.subject,
        # Key Vault is asked for A-labels only, de-duplicated (the IDN set lists names twice).
        san_dns_names=list(dict.fromkeys(dns_a_label(n) for n in spec.sans["dns_names"])) if spec.sans.get("dns_names") else None,
        san_ip_addresses=spec.sans.get("ip_addresses"),
        san_emails=spec.sans.get("emails"),
        san_user_principal_names=spec.sans.get("upns"),
        san_uris=spec.sans.get("uris"),
        key_type=KeyType.ec if kty == "EC" else KeyType.rsa,
        key_size=int(param) if kty == "RSA" else None,
        key_curve_name=_CURVES[str(param)] if kty == "EC" else None,
        exportable=True,
        content_type="application/x-pkcs12",
        validity_in_months=12,
    )


def issue(client: CertificateClient, ca: DevCA, spec: DemoCertificate, now: dt.datetime) -> None:
    """Create one certificate as production does: Key Vault makes the key and the CSR, the dev CA
    signs it (backdated so that ``spec.remaining_days`` are left), and it is merged."""
    policy = _policy(spec)
    operation = client.begin_create_certificate(spec.name, policy=policy,
                                                tags={"Recipient": spec.recipients}).result()
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    template = ca.template(spec.template)
    if template is None:
        raise CertlcError(f"the dev CA has no template {spec.template!r}", reason="TemplateMissing")
    not_after = now + dt.timedelta(days=spec.remaining_days)
    not_before = not_after - dt.timedelta(days=spec.lifetime_days)
    cert = ca.sign(csr, template, not_before=not_before, not_after=not_after)
    chain = [c.public_bytes(Encoding.DER) for c in [cert, *ca.chain]]
    client.merge_certificate(spec.name, chain, tags={"Recipient": spec.recipients})


def seed(client: CertificateClient, ca: DevCA, now: dt.datetime,
         certificates: list[DemoCertificate] = DEMO_CERTIFICATES) -> None:
    """Create each demo certificate (see :func:`issue`)."""
    for spec in certificates:
        issue(client, ca, spec, now)


def _versions(client: CertificateClient, name: str) -> int:
    # Issued versions only: a pending operation shows as a disabled version without a thumbprint.
    return sum(1 for v in client.list_properties_of_certificate_versions(name) if v.x509_thumbprint)


def _state(client: CertificateClient, name: str) -> dict[str, Any]:
    snap = read_certificate(client, "demo", name)
    bundle = client.get_certificate(name)
    cert = x509.load_der_x509_certificate(bytes(bundle.cer))
    tmpl = template_of(cert)
    return {
        "snapshot": snap,
        "versions": _versions(client, name),
        "template": tmpl.to_dict() if tmpl else None,
        "sans": sorted(f"{k}:{v}" for k, vs in desired_sans(snap).items() for v in vs),
    }


def local_config_text(state: Path, vault_port: int, identity_port: int, *,
                      templates_spec: list[TemplateSpec] = DEMO_TEMPLATES, lease: int = 60,
                      written_by: str = "`certlc demo`", sections: str = "", emulator_tail: str = "",
                      ca_profile: str = "devca", ca_profiles: str = '[ca_profiles.devca]\nkind = "devca"\n') -> str:
    """The local stack's certlc.toml: one vault 'demo' on the emulator, renewed through CA profile
    ``ca_profile`` (``ca_profiles`` holds its table; the dev CA by default). ``sections`` go before
    [emulator]; ``emulator_tail`` right after its keys (more keys, subscription tables)."""
    templates = "\n".join(
        "[[devca.templates]]\n" + "\n".join(
            f"{k} = {json.dumps(v)}" for k, v in t.model_dump(exclude_none=True).items()
        ) for t in templates_spec
    )
    return f"""# Written by {written_by}: the local stack's configuration.
state_dir = {json.dumps(str(state))}

[[vaults]]
name = "demo"
url = "https://localhost:{vault_port}"
ca_profile = {json.dumps(ca_profile)}

{ca_profiles}
[azure]
ca_bundle = {json.dumps(str(state / "emulator" / "tls" / "ca.pem"))}
managed_identity_client_id = "00000000-0000-0000-0000-00000000a001"

[renewal]
concurrency = 4
lock_lease_seconds = {lease}
{sections}
[emulator]
port = {vault_port}
identity_port = {identity_port}
vaults = ["demo"]
{emulator_tail}
{templates}
"""


def write_config(state: Path, vault_port: int, identity_port: int,
                 templates_spec: list[TemplateSpec] = DEMO_TEMPLATES, lease: int = 60) -> Path:
    """Write the emulator-and-dev-CA configuration (see :func:`local_config_text`) into ``state``."""
    path = state / "certlc.toml"
    path.write_text(local_config_text(state, vault_port, identity_port, templates_spec=templates_spec, lease=lease))
    return path


SHIFT_DAYS = 25  # how far the demo moves the emulator's clock
KEY_VAULT_WINDOW_DAYS = 30  # Key Vault sends CertificateNearExpiry 30 days before expiry


def event_due(spec: DemoCertificate) -> bool:
    """Whether Key Vault, its clock shifted by SHIFT_DAYS, sees ``spec`` in its near-expiry window."""
    return spec.remaining_days - SHIFT_DAYS < KEY_VAULT_WINDOW_DAYS


AGENT_INTERVAL_SECONDS = 5  # the demo agent's polling interval
AGENT_HOST = "demo-agent"  # the host name its rollout reports carry
_AGENT_SLACK_SECONDS = 2.0  # the demo sees merges and installs by polling, each up to a second late


def agent_watch(certificates: list[DemoCertificate]) -> list[str]:
    """The three certificates the demo's agent observes: due ones first, so renewals reach it."""
    due = [spec.name for spec in certificates if event_due(spec)]
    return (due + [spec.name for spec in certificates if spec.name not in due])[:3]


def write_agent_settings(root: Path, *, vault_url: str, client_id: str, ca_bundle: str, names: list[str],
                         rollout_url: str, rollout_key_file: str,
                         interval: int = AGENT_INTERVAL_SECONDS) -> Path:
    """The agent's settings as the Key Vault VM extension's JSON plus certlc's keys: the first
    certificate as the extension writes it (one PEM), the others as separate files with a stable
    link; every pass reported to the stack's webhook."""
    store = root / "store"
    observed: list[Any] = []
    for i, name in enumerate(names):
        url = f"{vault_url}/secrets/{name}"
        observed.append(url if i == 0 else {"url": url, "certlc": {
            "outputs": ["cert", "key", "chain", "fullchain"], "mode": "0640", "link": str(root / "etc" / name)}})
    settings = {
        "secretsManagementSettings": {"pollingIntervalInS": str(interval), "certificateStoreLocation": str(store),
                                      "observedCertificates": observed},
        "authenticationSettings": {"msiClientId": client_id},
        "certlc": {"ca_bundle": ca_bundle, "state_dir": str(root / "state"),
                   "report": {"url": rollout_url, "key_file": rollout_key_file, "header": "X-Certlc-Key",
                              "host": AGENT_HOST}},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "agent.json"
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def _installed_version(report_path: Path, name: str) -> str | None:
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    return next((c.get("installed_version") for c in report.get("certificates", []) if c.get("name") == name), None)


def run_demo(state: Path, *, progress: Any = print, timeout: float = 180, ca: str = "devca") -> dict[str, Any]:
    """Run the whole demo in ``state`` renewing through the local CA ``ca`` (devca, adcs-web,
    cfssl, acme); returns the report (see ``certlc demo --json``).

    Event-driven, as in production: `certlc up` starts the local stack, the vault is seeded, the
    emulator's clock moves SHIFT_DAYS ahead, Key Vault's near-expiry events reach the webhook
    (and the queue), the worker runs the renewals. Then a sweep checks nothing else is due.
    """
    from certlc.emulator.admin import set_clock_offset
    from certlc.stack import start_agent
    from certlc.up import Part, add_part, stop_all, up

    state = state.resolve()
    for part in ("emulator", "devca", "results", "prefect", "mail", "logs", "agent", "rollout", "stack.json"):
        target = state / part
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    certificates = demo_certificates(ca)
    info, procs = up(state, progress=progress, drain_interval_seconds=10, ca=ca)
    try:
        os.environ.update(info.env)  # the demo's own SDK clients use the worker identity too
        config = Path(info.config)
        settings: Settings = load_settings(config)

        from certlc.clients import certificate_client, reset_clients

        reset_clients()
        client = certificate_client(settings.vault("demo"), settings)
        dev = DevCA(settings.devca_path, settings.devca.templates, settings.devca.common_name)
        now = dt.datetime.now(dt.UTC)
        progress(f"seeding vault 'demo' with {len(certificates)} certificates issued earlier by the dev CA; "
                 f"renewals go to CA profile {settings.vaults[0].ca_profile!r} ...")
        seed(client, dev, now, certificates)
        before = {spec.name: _state(client, spec.name) for spec in certificates}
        watched = agent_watch(certificates)
        agent_root = state / "agent"
        agent_report = agent_root / "state" / "rollout.json"
        settings_file = write_agent_settings(
            agent_root, vault_url=settings.vault("demo").url, client_id=settings.emulator.principals["agent"],
            ca_bundle=str(settings.azure.ca_bundle), names=watched, rollout_url=info.rollout_url,
            rollout_key_file=info.rollout_key_file)
        progress(f"starting certlc agent (identity 'agent', Key Vault Secrets User) watching {', '.join(watched)}, "
                 f"polling every {AGENT_INTERVAL_SECONDS} s ...")
        agent = start_agent(settings_file, info.env, agent_report, state / "logs" / "agent.log")
        procs.append(agent)
        add_part(state, info, Part.of("agent", agent, f"file://{agent_report}", state / "logs" / "agent.log"))
        progress(f"moving the emulator's clock {SHIFT_DAYS} days ahead: Key Vault's near-expiry events follow ...")
        shifted = time.monotonic()
        set_clock_offset(state / "emulator", f"{SHIFT_DAYS}d")
        expected = [spec.name for spec in certificates if event_due(spec)]
        renewed_after: dict[str, float] = {}
        merged_seen: dict[str, tuple[float, str | None]] = {}  # name -> (when the demo saw it, new version)
        installed_after: dict[str, float] = {}
        watched_due = [name for name in watched if name in expected]
        while (len(renewed_after) < len(expected) or len(installed_after) < len(watched_due)) \
                and time.monotonic() - shifted < timeout:
            for name in expected:
                if name not in renewed_after and _versions(client, name) > before[name]["versions"]:
                    seen = time.monotonic()
                    renewed_after[name] = seen - shifted
                    progress(f"  {name} renewed {renewed_after[name]:.1f} s after the shift")
                    if name in watched:
                        merged_seen[name] = (seen, client.get_certificate(name).properties.version)
            for name, (seen, version) in merged_seen.items():
                if name not in installed_after and _installed_version(agent_report, name) == version:
                    installed_after[name] = time.monotonic() - seen
                    progress(f"  {name}: the agent installed version {version} "
                             f"{installed_after[name]:.1f} s after the merge")
            time.sleep(0.25)
        time.sleep(3)  # let duplicate runs (Expired after NearExpiry, the queue copy) finish
        after = {spec.name: _state(client, spec.name) for spec in certificates}
        env = {**info.env}
        progress("running a sweep (certlc sweep): nothing else should be due ...")
        second = _sweep(config, env, state / "logs" / "sweep.log")
        final = {spec.name: _state(client, spec.name)["versions"] for spec in certificates}
        report = _report(certificates, before, after, final, renewed_after, second, dev, ca, info.api,
                         state / "logs")
        report["agent"] = _agent_report(client, watched, expected, installed_after, agent_report,
                                        _rollout_seen(info.rollout_url, settings))
        report["mail"] = _mail_report(certificates, report["certificates"], state / "mail")
        report["ok"] = report["ok"] and report["agent"]["ok"] and report["mail"]["ok"]
        report["ca"] = ca
        return report
    finally:
        progress("stopping the local stack ...")
        stop_all(procs)
        (state / "stack.json").unlink(missing_ok=True)


def _mail_report(certificates: list[DemoCertificate], rows: list[dict[str, Any]], maildir: Path,
                 wait: float = 20) -> dict[str, Any]:
    """What the stack's SMTP sink received: each renewed certificate's owners (its Recipient tag)
    must have got exactly one "renewed" e-mail, and nobody one for a certificate not renewed."""
    from email import policy
    from email.parser import BytesParser

    from certlc.notify import parse_recipients

    renewed = {r["name"] for r in rows if r["renewed"]}

    def received() -> list[tuple[str, list[str]]]:
        found = []
        for folder in ("new", "cur"):  # a Maildir: one file per message
            for path in sorted((maildir / folder).glob("*")) if (maildir / folder).is_dir() else []:
                mail = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
                to = [a.strip() for a in str(mail["To"] or "").split(",") if a.strip()]
                found.append((str(mail["Subject"] or ""), to))
        return found

    deadline = time.monotonic() + wait  # the notify step runs just after the merge the demo saw
    while True:
        messages = received()
        got = {name for name in renewed if any(subject == f"Certificate {name} renewed" for subject, _ in messages)}
        if got == renewed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    per_certificate = []
    for spec in certificates:
        mine = [(subject, to) for subject, to in messages if subject == f"Certificate {spec.name} renewed"]
        owners = parse_recipients(spec.recipients)[0]
        expected = 1 if spec.name in renewed else 0
        per_certificate.append({"name": spec.name, "owners": owners, "renewed_mails": len(mine),
                                "ok": len(mine) == expected and all(sorted(to) == sorted(owners) for _, to in mine)})
    return {"messages": len(messages), "certificates": per_certificate,
            "ok": all(c["ok"] for c in per_certificate)}


def _rollout_seen(url: str, settings: Settings) -> dict[str, str | None]:
    """What the webhook app holds for the demo agent: certificate name -> installed version."""
    import httpx

    key = settings.webhook.shared_key.get_secret_value() if settings.webhook.shared_key else ""
    try:
        data = httpx.get(url, headers={"X-Certlc-Key": key}, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {c["name"]: h["installed_version"] for c in data.get("certificates", []) for h in c["hosts"]
            if h["host"] == AGENT_HOST}


def _agent_report(client: CertificateClient, watched: list[str], expected: list[str],
                  installed_after: dict[str, float], report_path: Path,
                  reported: dict[str, str | None]) -> dict[str, Any]:
    """Per watched certificate: the vault's version, the agent's, how soon after the merge it was
    installed, and what the webhook's rollout state says; ok when all agree and every renewed
    version was installed within one polling interval."""
    rows = []
    for name in watched:
        vault_version = client.get_certificate(name).properties.version
        installed = _installed_version(report_path, name)
        after = installed_after.get(name)
        due = name in expected
        rows.append({
            "name": name, "due": due, "vault_version": vault_version, "installed_version": installed,
            "reported_version": reported.get(name),
            "installed_after_merge_s": round(after, 1) if after is not None else None,
            "ok": installed == vault_version == reported.get(name)
            and (not due or (after is not None and after <= AGENT_INTERVAL_SECONDS + _AGENT_SLACK_SECONDS)),
        })
    return {"interval_seconds": AGENT_INTERVAL_SECONDS, "host": AGENT_HOST, "certificates": rows,
            "ok": bool(rows) and all(r["ok"] for r in rows)}


def _sweep(config: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    with log.open("wb") as err:
        proc = subprocess.run([*CLI, "sweep", "--config", str(config), "--json"], stdout=subprocess.PIPE,
                              stderr=err, env={**os.environ, **env}, timeout=1800, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise CertlcError(f"the sweep failed (exit {proc.returncode}); see {log}", reason="SweepFailed") from None


def _report(certificates: list[DemoCertificate], before: dict[str, Any], after: dict[str, Any],
            final: dict[str, int], renewed_after: dict[str, float], second: dict[str, Any], ca: DevCA, kind: str,
            api: str, logs: Path) -> dict[str, Any]:
    rows = []
    now = dt.datetime.now(dt.UTC)
    for spec in certificates:
        old, new = before[spec.name], after[spec.name]
        o, n = old["snapshot"], new["snapshot"]
        renewed = new["versions"] == old["versions"] + 1 and n.thumbprint != o.thumbprint
        template = ca.template(spec.template)
        # cfssl's profiles mirror the templates' validity; the local Pebble issues ACME_VALIDITY_DAYS.
        days = ACME_VALIDITY_DAYS if kind == "acme" else (template.validity_days if template else 0)
        validity = dt.timedelta(days=days)
        new_after = dt.datetime.fromisoformat(n.not_after.replace("Z", "+00:00"))
        rows.append({
            "name": spec.name,
            "template": spec.template,
            "key": f"{n.key['type']} {n.key.get('curve') or n.key.get('size')}",
            "days_left": spec.remaining_days,
            "due": event_due(spec),
            "renewed": renewed,
            "seconds_after_shift": round(renewed_after[spec.name], 1) if spec.name in renewed_after else None,
            "outcome": "Renewed" if renewed else ("NotRenewed" if event_due(spec) else "NotDue"),
            "old_thumbprint": o.thumbprint,
            "new_thumbprint": n.thumbprint,
            "old_not_after": o.not_after,
            "new_not_after": n.not_after,
            "sans": new["sans"],
            "sans_kept": new["sans"] == old["sans"] and n.subject == o.subject,
            # Only AD CS (and the dev CA) stamp the template; other CAs issue none to keep.
            "template_kept": new["template"] == old["template"] if kind in _STAMPS_TEMPLATES else True,
            "key_kept": n.key == o.key,
            # The CA sets notAfter = issue time + the template's validity; the renewal ran moments ago.
            "expiry_extended_by_template": renewed and abs((new_after - now) - validity) < dt.timedelta(hours=1),
            "versions_before": old["versions"],
            "versions_after": new["versions"],
            "versions_after_second_sweep": final[spec.name],
        })
    second_renewed = [r["name"] for r in second.get("results", []) if r.get("outcome") in ("Renewed",)]
    ok = all(
        (r["renewed"] and r["sans_kept"] and r["template_kept"] and r["key_kept"] and r["expiry_extended_by_template"]
         and r["versions_after"] == r["versions_before"] + 1)
        if r["due"] else (not r["renewed"] and r["versions_after"] == r["versions_before"])
        for r in rows
    ) and not second_renewed and all(r["versions_after_second_sweep"] == r["versions_after"] for r in rows) \
        and any(r["due"] for r in rows) and any(not r["due"] for r in rows)
    return {"ok": ok, "prefect_api": api, "shift_days": SHIFT_DAYS, "second_sweep_renewed": second_renewed,
            "certificates": rows, "logs": str(logs)}
