"""The agent reads the Key Vault VM extension's settings JSON as-is, plus certlc's additions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certlc.agent.settings import (
    DEFAULT_POLLING_INTERVAL,
    DEFAULT_STORE_LOCATION,
    load_agent_settings,
    parse_agent_settings,
    parse_secret_url,
)
from certlc.errors import ConfigError

# The Linux extension's documented settings (v2.0, URL strings; the interval is a string).
LINUX_V2 = """
{
  "secretsManagementSettings": {
    "pollingIntervalInS": "3600",
    "certificateStoreName": "ignored-on-linux",
    "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault",
    "requireInitialSync": true,
    "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycertificate",
                             "https://myvault.vault.azure.net/secrets/mycertificate2"]
  },
  "authenticationSettings": {
    "msiEndpoint": "http://169.254.169.254/metadata/identity",
    "msiClientId": "00000000-0000-0000-0000-00000000a002"
  }
}
"""

# The Linux extension v2.2+ object form with per-certificate location, symlink and ACLs.
LINUX_OBJECTS = """
{
  "secretsManagementSettings": {
    "pollingIntervalInS": "600",
    "requireInitialSync": false,
    "linkOnRenewal": false,
    "observedCertificates": [
      {
        "url": "https://contoso.vault.azure.net/secrets/app1",
        "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault/app1",
        "customSymbolicLinkName": "app1-current",
        "acls": [{"user": "app1", "group": "appgroup1"}]
      },
      "https://contoso.vault.azure.net/secrets/app2"
    ]
  }
}
"""

# The same settings the way an ARM template / `az vm extension set` carries them.
ARM_WRAPPED = {
    "type": "Microsoft.Compute/virtualMachines/extensions",
    "properties": {
        "publisher": "Microsoft.Azure.KeyVault",
        "type": "KeyVaultForLinux",
        "typeHandlerVersion": "2.0",
        "settings": json.loads(LINUX_V2),
    },
}


def settings(**sms: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"observedCertificates": ["https://v.vault.azure.net/secrets/web"]}
    return {"secretsManagementSettings": {**base, **sms}}


def with_certlc(**options: Any) -> dict[str, Any]:
    return settings(observedCertificates=[{"url": "https://v.vault.azure.net/secrets/web", "certlc": options}])


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_agent_settings(data)
    return info.value.message


def test_the_linux_extension_settings_are_read_as_is() -> None:
    agent = parse_agent_settings(json.loads(LINUX_V2))
    assert agent.polling_interval == 3600
    assert agent.secrets_management.require_initial_sync is True
    assert agent.authentication.msi_client_id == "00000000-0000-0000-0000-00000000a002"
    assert [(w.vault_url, w.secret_name, w.stem) for w in agent.watched] == [
        ("https://myvault.vault.azure.net", "mycertificate", "myvault.mycertificate"),
        ("https://myvault.vault.azure.net", "mycertificate2", "myvault.mycertificate2"),
    ]
    assert all(w.store == Path(DEFAULT_STORE_LOCATION) and w.options.outputs == ["pem"] for w in agent.watched)


def test_object_entries_keep_their_location_symlink_and_acl_owner() -> None:
    app1, app2 = parse_agent_settings(json.loads(LINUX_OBJECTS)).watched
    assert app1.store == Path("/var/lib/waagent/Microsoft.Azure.KeyVault/app1")
    assert app1.symlink_name == "app1-current"
    assert (app1.options.owner, app1.options.group) == ("app1", "appgroup1")
    assert app2.store == Path(DEFAULT_STORE_LOCATION) and app2.options.owner is None


def test_arm_and_cli_wrappers_are_unwrapped() -> None:
    assert parse_agent_settings(ARM_WRAPPED).polling_interval == 3600
    assert parse_agent_settings({"settings": json.loads(LINUX_V2)}).watched[0].secret_name == "mycertificate"


@pytest.mark.parametrize(("value", "seconds"), [("3600", 3600), (" 60 ", 60), (120, 120)],
                         ids=["string as documented", "string with spaces", "plain int"])
def test_polling_interval_is_a_string_or_an_int(value: Any, seconds: int) -> None:
    assert parse_agent_settings(settings(pollingIntervalInS=value)).polling_interval == seconds


def test_polling_interval_defaults_to_an_hour() -> None:
    assert parse_agent_settings(settings()).polling_interval == DEFAULT_POLLING_INTERVAL == 3600


def test_a_comma_separated_url_list_is_the_v1_form() -> None:
    agent = parse_agent_settings(settings(
        observedCertificates="https://v.vault.azure.net/secrets/a,https://v.vault.azure.net/secrets/b"))
    assert [w.secret_name for w in agent.watched] == ["a", "b"]


def test_certlc_options_are_parsed_with_their_defaults() -> None:
    (watched,) = parse_agent_settings(with_certlc(
        outputs=["fullchain", "key", "pfx"], pfx={"password_env": "PFX_PW", "legacy": True}, owner="www-data",
        group=33, mode="0640", public_mode="0644", link="/etc/nginx/tls/web", reload="systemctl reload nginx",
        verify={"address": "127.0.0.1:8443", "server_name": "web.contoso.com"}, keep_versions=5)).watched
    opts = watched.options
    assert opts.outputs == ["fullchain", "key", "pfx"]
    assert opts.pfx.password_env == "PFX_PW" and opts.pfx.legacy
    assert (opts.owner, opts.group, opts.mode, opts.public_mode) == ("www-data", 33, 0o640, 0o644)
    assert opts.link == Path("/etc/nginx/tls/web")
    assert opts.verify is not None and (opts.verify.host, opts.verify.port, opts.verify.server_name) == (
        "127.0.0.1", 8443, "web.contoso.com")
    assert opts.keep_versions == 5


def test_verify_accepts_host_port_shorthand_and_ipv6() -> None:
    (watched,) = parse_agent_settings(with_certlc(verify="[::1]:443")).watched
    assert watched.options.verify is not None
    assert (watched.options.verify.host, watched.options.verify.port) == ("::1", 443)


def test_top_level_defaults_apply_and_entries_override_them() -> None:
    data = settings(observedCertificates=[
        "https://v.vault.azure.net/secrets/a",
        {"url": "https://v.vault.azure.net/secrets/b", "certlc": {"keep_versions": 1, "pfx": {"legacy": True}}},
    ])
    data["certlc"] = {"defaults": {"keep_versions": 4, "outputs": ["pem", "pfx"], "pfx": {"password_env": "PW"}}}
    a, b = parse_agent_settings(data).watched
    assert (a.options.keep_versions, a.options.outputs, a.options.pfx.password_env) == (4, ["pem", "pfx"], "PW")
    assert (b.options.keep_versions, b.options.pfx.password_env, b.options.pfx.legacy) == (1, "PW", True)


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param(settings(pollingIntervalInS="hourly"), "secretsManagementSettings.pollingIntervalInS", id="interval word"),
    pytest.param(settings(pollingIntervalInS="0"), "secretsManagementSettings.pollingIntervalInS", id="interval zero"),
    pytest.param(settings(observedCertificates=[]), "secretsManagementSettings.observedCertificates", id="none observed"),
    pytest.param(settings(observedCertificates=["http://v.vault.azure.net/secrets/a"]),
                 "observedCertificates.0.url: 'http://v.vault.azure.net/secrets/a' is not an https", id="plain http"),
    pytest.param(settings(observedCertificates=["https://v.vault.azure.net/certificates/web"]),
                 "observe the secret instead (https://v.vault.azure.net/secrets/web)", id="certificate URL"),
    pytest.param(settings(observedCertificates=[{"url": "https://v.vault.azure.net/secrets/a", "colour": "red"}]),
                 "observedCertificates.0.colour: Extra inputs are not permitted", id="unknown key"),
    pytest.param(with_certlc(mode="0644"), "lets others read or write the private key", id="key mode world-readable"),
    pytest.param(with_certlc(mode="rw-r-----"), "observedCertificates.0.certlc.mode", id="mode not octal"),
    pytest.param(with_certlc(outputs=["der"]), "observedCertificates.0.certlc.outputs.0", id="unknown output"),
    pytest.param(with_certlc(outputs=[]), "name at least one output form", id="no outputs"),
    pytest.param(with_certlc(verify="localhost"), "certlc.verify.address: 'localhost' is not host:port", id="verify no port"),
    pytest.param(with_certlc(link="relative/link"), "certlc.link: relative/link is not an absolute path", id="relative link"),
    pytest.param(with_certlc(pfx={"password_file": "/x", "password_env": "Y"}), "not both", id="two password sources"),
    pytest.param(with_certlc(reload=["nginx"], reload_shell=True), "reload_shell needs", id="shell with argv"),
    pytest.param(with_certlc(keep_versions=-1), "certlc.keep_versions", id="negative keep"),
    pytest.param(settings(observedCertificates=["https://v.vault.azure.net/secrets/a",
                                                "https://v.vault.azure.net/secrets/a/0123abcd"]),
                 "is observed twice", id="same secret twice"),
    pytest.param(settings(certificateStoreLocation="LocalMachine"), "Windows store locations", id="windows store"),
    pytest.param(settings(observedCertificates=[{"url": "https://v.vault.azure.net/secrets/a",
                                                 "acls": [{"user": "a"}, {"user": "b,u:evil:rw"}]}]),
                 "acls.1.user: 'b,u:evil:rw' is not a user or group name", id="acl entry injection"),
    pytest.param({"observedCertificates": []}, "secretsManagementSettings is missing", id="not extension settings"),
])
def test_bad_settings_get_an_error_naming_the_field(data: Any, expected: str) -> None:
    assert expected in error_of(data)


def test_the_first_acls_entry_owns_the_files_and_the_others_read_them_through_an_acl() -> None:
    [w] = parse_agent_settings(settings(observedCertificates=[{
        "url": "https://v.vault.azure.net/secrets/a",
        "acls": [{"user": "app1", "group": "appgroup1"}, {"user": "nginx"}, {"group": "postfix"}],
        "certlc": {"readers": [{"user": "haproxy", "group": "ssl-cert"}]}}])).watched
    assert (w.options.owner, w.options.group) == ("app1", "appgroup1")
    assert [q for r in w.options.readers for q in r.acl_entries()] == ["u:nginx", "g:postfix", "u:haproxy", "g:ssl-cert"]


URL = "https://v.vault.azure.net/secrets/web"


@pytest.mark.parametrize(("entry", "expected"), [
    ({"url": URL, "certlc": {"reload": "echo 'unterminated"}}, "cannot be split into arguments"),
    ({"url": URL, "certlc": {"verify": "a..b:443"}}, "'a..b' is not a host name or IP address"),
    ({"url": URL, "certlc": {"verify": {"address": "127.0.0.1:443", "server_name": "bad..name"}}},
     "is not a host name"),
    ({"url": URL, "certlc": {"verify": "host:٤٤٣"}}, "is not host:port"),
    ({"url": URL, "certlc": {"owner": -5}}, "-5 is not a user or group id"),
    ({"url": URL, "certlc": {"group": 2**40}}, "is not a user or group id"),
    ({"url": URL, "certlc": {"owner": "www-data,u:evil"}}, "is not a user or group name"),
    ({"url": URL, "certlc": {"mode": "0000"}}, "not even the owner"),
    ({"url": URL, "certlc": {"public_mode": "0777"}}, "lets others change"),
    ({"url": URL, "certlc": {"mode": 640}}, "give the mode as a string, \"0640\""),
    ({"url": URL, "certlc": {"name": "web\u0000x"}}, "certlc.name: a NUL character"),
    ({"url": "https://user:pw@v.vault.azure.net/secrets/web"}, "holds no user name or password"),
    ({"url": URL, "customSymbolicLinkName": "v.web.current"}, "would replace this certificate's own files"),
    ({"url": URL, "customSymbolicLinkName": "v.web.versions"}, "would replace this certificate's own files"),
], ids=["reload-quote", "verify-idna", "sni-idna", "verify-port-digits", "negative-uid", "huge-gid",
        "owner-injection", "mode-0000", "public-0777", "decimal-mode", "nul", "url-userinfo", "link-on-current",
        "link-on-versions"])
def test_values_that_would_fail_later_are_refused_when_the_settings_are_read(entry: Any, expected: str) -> None:
    message = error_of(settings(observedCertificates=[entry]))
    assert expected in message, message
    assert "pw" not in message.replace("pwd", "")  # a password in a URL is not repeated


def test_entries_may_not_take_each_others_files_or_differ_only_in_case() -> None:
    other = "https://v.vault.azure.net/secrets/api"
    assert "is also used by entry 0" in error_of(settings(observedCertificates=[
        URL, {"url": other, "customSymbolicLinkName": "v.web.current"}]))
    assert "is also used by entry 0" in error_of(settings(observedCertificates=[
        {"url": URL, "certlc": {"link": "/etc/ssl/web"}}, {"url": other, "certlc": {"link": "/etc/ssl/web"}}]))
    assert "observed twice" in error_of(settings(observedCertificates=[
        URL, "https://V.VAULT.azure.net/secrets/WEB"]))
    assert "pollingIntervalInS" in error_of(settings(pollingIntervalInS="٦٠", observedCertificates=[URL]))
    assert "max_backoff" in error_of({**settings(observedCertificates=[URL]), "certlc": {"max_backoff": 10**400}})


def test_two_vaults_with_the_same_secret_name_need_distinct_file_names() -> None:
    data = settings(observedCertificates=["https://a.vault.azure.net/secrets/web", "https://b.vault.azure.net/secrets/web"])
    assert [w.stem for w in parse_agent_settings(data).watched] == ["a.web", "b.web"]
    clash = settings(observedCertificates=[
        "https://a.vault.azure.net/secrets/web",
        {"url": "https://b.vault.azure.net/secrets/api", "certlc": {"name": "a.web"}}])
    assert "a.web is also used by entry 0" in error_of(clash)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://v.vault.azure.net/secrets/web", ("https://v.vault.azure.net", "web")),
    ("https://v.vault.azure.net/secrets/web/", ("https://v.vault.azure.net", "web")),
    ("https://v.vault.azure.net/secrets/web/5f0c2b3e", ("https://v.vault.azure.net", "web")),
    ("https://127.0.0.1:8443/secrets/web", ("https://127.0.0.1:8443", "web")),
], ids=["plain", "trailing slash", "versioned: follows the latest", "emulator with port"])
def test_secret_urls(url: str, expected: tuple[str, str]) -> None:
    assert parse_secret_url(url) == expected


def test_json_and_toml_files_are_read_and_relative_paths_anchor_to_the_file(tmp_path: Path) -> None:
    json_file = tmp_path / "kv.json"
    json_file.write_text("\ufeff" + LINUX_V2, encoding="utf-8")  # Windows tools write a BOM
    assert load_agent_settings(json_file).polling_interval == 3600

    toml_file = tmp_path / "agent.toml"
    toml_file.write_text("""
[secretsManagementSettings]
pollingIntervalInS = "300"
observedCertificates = [
  "https://v.vault.azure.net/secrets/web",
  { url = "https://v.vault.azure.net/secrets/api", certlc = { outputs = ["pfx"], pfx = { password_file = "pw.txt" } } },
]

[certlc]
ca_bundle = "vault-ca.pem"
state_dir = "state"
report = { path = "out/rollout.json" }
""", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"certlc.ca_bundle: .*vault-ca.pem is not a readable file"):
        load_agent_settings(toml_file)
    (tmp_path / "vault-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    agent = load_agent_settings(toml_file)
    assert agent.polling_interval == 300
    assert agent.certlc.ca_bundle == tmp_path / "vault-ca.pem"
    assert agent.watched[1].options.pfx.password_file == tmp_path / "pw.txt"
    # The state and the report go beside the settings file, not into the working directory.
    assert agent.certlc.resolved_state_dir == tmp_path / "state"
    assert agent.certlc.report_path == tmp_path / "out" / "rollout.json"


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.json", "{not json", "not valid JSON"),
    ("bad.toml", "x = ", "not valid TOML"),
    ("list.json", "[]", "expected a JSON object"),
], ids=["broken JSON", "broken TOML", "not an object"])
def test_unreadable_files_are_config_errors(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_agent_settings(path)
    assert expected in info.value.message and str(path) in info.value.message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read agent settings"):
        load_agent_settings(tmp_path / "absent.json")
