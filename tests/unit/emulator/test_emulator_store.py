"""Persistent state and TLS material on disk: atomic, private, keys sealed (no server needed)."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import serialization

from certlc.emulator.errors import KvError
from certlc.emulator.keys import KeySpec, generate_key, seal_key, unseal_key
from certlc.emulator.sealing import MasterKey, Sealer
from certlc.emulator.store import Certificate, VaultStore
from certlc.emulator.tls import ensure_tls


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_master_key_is_private_and_stable(tmp_path: Path) -> None:
    first = MasterKey.load_or_create(tmp_path)
    assert _mode(tmp_path / "master.key") == 0o600
    assert MasterKey.load_or_create(tmp_path).derive("x") == first.derive("x") != first.derive("y")
    assert "hidden" in repr(first)


def test_a_write_is_saved_and_a_failed_one_is_discarded(tmp_path: Path) -> None:
    sealer = Sealer(MasterKey.load_or_create(tmp_path).fernet("store"))
    store = VaultStore(tmp_path / "vaults" / "demo.json", sealer)
    with store.write() as state:
        state.certificates["a"] = Certificate(name="A", policy={"p": 1}, policy_created=1, policy_updated=1)
    with pytest.raises(KvError), store.write() as state:
        state.certificates["b"] = Certificate(name="B", policy={}, policy_created=1, policy_updated=1)
        raise KvError(409, "Conflict", "refused after a partial change")
    with store.read() as state:
        assert list(state.certificates) == ["a"]
    reloaded = VaultStore(tmp_path / "vaults" / "demo.json", sealer)
    with reloaded.read() as state:
        assert state.certificates["a"].name == "A"
    assert _mode(tmp_path / "vaults" / "demo.json") == 0o600
    assert not list((tmp_path / "vaults").glob(".*.tmp"))  # no temp files left behind


def test_sealed_keys_hold_no_plaintext_and_need_the_right_master_key(tmp_path: Path) -> None:
    sealer = Sealer(MasterKey.load_or_create(tmp_path / "one").fernet("store"))
    key = generate_key(KeySpec("EC"))
    sealed = seal_key(sealer, key)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert der[-32:].hex() not in sealed and "PRIVATE" not in sealed
    assert unseal_key(sealer, sealed).private_numbers() == key.private_numbers()
    other = Sealer(MasterKey.load_or_create(tmp_path / "two").fernet("store"))
    with pytest.raises(InvalidToken):
        unseal_key(other, sealed)


def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({"schema": 99, "certificates": {}, "deleted": {}}))
    with pytest.raises(ValueError, match="schema"):
        VaultStore(path, Sealer(MasterKey.load_or_create(tmp_path).fernet("store")))


def test_tls_material_is_made_once_for_loopback_with_encrypted_keys(tmp_path: Path) -> None:
    master = MasterKey.load_or_create(tmp_path)
    files = ensure_tls(tmp_path, master)
    server_pem = files.certfile.read_bytes()
    assert ensure_tls(tmp_path, master).certfile.read_bytes() == server_pem  # reused, not remade
    root = x509.load_pem_x509_certificate(files.ca_bundle.read_bytes())
    server = x509.load_pem_x509_certificate(server_pem)
    server.verify_directly_issued_by(root)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).critical
    for key_file in (files.keyfile, tmp_path / "tls" / "ca-key.pem"):
        assert key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert _mode(key_file) == 0o600
    assert "key_password" not in repr(files)
