"""Policy normalisation: the defaults Key Vault echoes, and what it refuses (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from certlc.emulator.errors import KvError
from certlc.emulator.policy import merge_policy, normalize_policy


def test_a_minimal_policy_gets_the_service_defaults() -> None:
    policy = normalize_policy({"x509_props": {"subject": "CN=a"}})
    assert policy["key_props"] == {"exportable": True, "kty": "RSA", "key_size": 2048, "reuse_key": False}
    assert policy["secret_props"] == {"contentType": "application/x-pkcs12"}
    assert policy["x509_props"] == {
        "subject": "CN=a",
        "ekus": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
        "key_usage": ["digitalSignature", "keyEncipherment"],
        "validity_months": 12,
        "basic_constraints": {"ca": False},
    }
    assert policy["issuer"] == {"name": "Unknown", "cert_transparency": False}
    assert policy["lifetime_actions"] == [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}]
    assert policy["attributes"] == {"enabled": True}


def test_self_defaults_to_auto_renew_and_issuer_names_are_case_insensitive() -> None:
    policy = normalize_policy({"issuer": {"name": "self"}, "x509_props": {"sans": {"dns_names": ["a.example"]}}})
    assert policy["issuer"]["name"] == "Self"
    assert policy["lifetime_actions"][0]["action"] == {"action_type": "AutoRenew"}


def test_nulls_and_fields_from_newer_api_versions_are_ignored() -> None:
    policy = normalize_policy({
        "key_props": {"kty": "EC", "crv": None, "key_size": None},
        "x509_props": {"subject": "CN=a", "sans": {"dns_names": None, "uris": ["https://a.example/x"]}},
        "platformManaged": {"certificateUsage": "x"},
        "preserveCertOrder": True,
    })
    assert policy["key_props"]["crv"] == "P-256" and policy["key_props"]["key_size"] == 256
    assert policy["x509_props"]["sans"] == {"uris": ["https://a.example/x"]}
    assert "platformManaged" not in policy


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({}, "either subject or one of the subject alternative names"),
        ({"x509_props": {"subject": "CN=a"}, "key_props": {"kty": "RSA", "key_size": 1024}}, "RSA key size"),
        ({"x509_props": {"subject": "CN=a"}, "key_props": {"kty": "EC", "crv": "P-192"}}, "curve"),
        ({"x509_props": {"subject": "CN=a"}, "key_props": {"kty": "oct"}}, "key type"),
        ({"x509_props": {"subject": "CN=a"}, "issuer": {"name": "DigiCert"}}, "not configured"),
        ({"x509_props": {"subject": "CN=a", "key_usage": ["signEverything"]}}, "key usage"),
        ({"x509_props": {"subject": "CN=a", "ekus": ["serverAuth"]}}, "EKU"),
        ({"x509_props": {"subject": "XX=a"}}, "unknown attribute type"),
        ({"x509_props": {"sans": {"ipAddresses": ["10.0.0.300"]}}}, "IP address"),
        ({"x509_props": {"subject": "CN=a"}, "secret_props": {"contentType": "text/plain"}}, "content type"),
        ({"x509_props": {"subject": "CN=a"}, "lifetime_actions": [{"trigger": {}, "action": {"action_type": "AutoRenew"}}]},
         "exactly one"),
    ],
    ids=[
        "no subject and no SAN", "weak RSA", "unknown curve", "symmetric key", "unconfigured issuer",
        "unknown key usage", "EKU by name", "unknown subject attribute", "bad IP", "bad content type",
        "trigger without threshold",
    ],
)
def test_policies_key_vault_would_refuse_are_400_bad_parameter(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(KvError) as refused:
        normalize_policy(raw)
    assert refused.value.status == 400 and refused.value.code == "BadParameter"
    assert fragment in refused.value.message


def test_a_policy_patch_keeps_the_members_it_does_not_name() -> None:
    stored = normalize_policy({
        "key_props": {"kty": "EC", "crv": "P-384"},
        "x509_props": {"subject": "CN=a", "sans": {"dns_names": ["a.example"]}, "ekus": ["1.3.6.1.5.5.7.3.1"]},
        "secret_props": {"contentType": "application/x-pem-file"},
    })
    patched = merge_policy(stored, {"x509_props": {"validity_months": 3}, "issuer": {"name": "Self"}})
    assert patched["x509_props"]["sans"] == {"dns_names": ["a.example"]}
    assert patched["x509_props"]["ekus"] == ["1.3.6.1.5.5.7.3.1"] and patched["x509_props"]["validity_months"] == 3
    assert patched["key_props"]["crv"] == "P-384" and patched["secret_props"]["contentType"] == "application/x-pem-file"
    assert patched["issuer"]["name"] == "Self"
