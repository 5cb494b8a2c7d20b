"""Installed files have the configured modes, owners and links; writes are atomic; rollback and pruning work."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.agent import install as install_module
from certlc.agent.install import FILE_NAMES, Installer, InstallFailed, remove_stale_temps, write_atomic
from certlc.agent.material import CONTENT_TYPE_PFX, Material, decode_secret
from certlc.agent.settings import Watched, parse_agent_settings
from certlc.errors import ConfigError
from certlc.x509 import load_any

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")


def watched(store: Path, *, symlink: str | None = None, **options: Any) -> Watched:
    entry: dict[str, Any] = {"url": "https://contoso.vault.azure.net/secrets/web",
                             "certificateStoreLocation": str(store), "certlc": options}
    if symlink:
        entry["customSymbolicLinkName"] = symlink
    return parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [entry]}}).watched[0]


def material(test_ca: Any) -> Material:
    return decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".certlc-tmp-" in p.name]


@pytest.fixture
def other_user() -> tuple[int, int]:
    """An unprivileged user and group root can chown to (nobody / nogroup)."""
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup on this host")


# Layout, modes, owners, links --------------------------------------------------------------------------------------
def test_first_install_writes_every_form_with_its_mode_and_the_stable_links(tmp_path: Path, test_ca: Any) -> None:
    store = tmp_path / "store"
    link = tmp_path / "etc" / "nginx" / "tls" / "web"
    w = watched(store, symlink="web-current", outputs=["pem", "cert", "key", "chain", "fullchain", "pfx"],
                mode="0640", public_mode="0644", link=str(link))
    m = material(test_ca)
    result = Installer(w).install(m, "v1")

    assert result.version == "v1" and result.previous is None
    assert result.directory == store / "contoso.web.versions" / "v1"
    for form, name in FILE_NAMES.items():
        path = result.directory / name
        assert result.files[form] == path
        assert mode_of(path) == (0o640 if form in ("pem", "key", "pfx") else 0o644), form
    assert (result.directory / "combined.pem").read_bytes() == m.combined_pem()
    assert (result.directory / "key.pem").read_bytes() == m.key_pem()
    assert (result.directory / "fullchain.pem").read_bytes() == m.fullchain_pem()
    assert pkcs12.load_key_and_certificates((result.directory / "cert.pfx").read_bytes(), None)[1] == m.leaf

    # The moving link is relative (the store can be moved); the others never change.
    assert os.readlink(store / "contoso.web.current") == "contoso.web.versions/v1"
    assert os.readlink(store / "contoso.web") == "contoso.web.current/combined.pem"
    assert os.readlink(store / "web-current") == "contoso.web.current/combined.pem"
    assert os.readlink(link) == str(store / "contoso.web.current")
    assert (store / "contoso.web").read_bytes() == m.combined_pem()
    assert (link / "fullchain.pem").read_bytes() == m.fullchain_pem()
    assert not temps(store) and not temps(result.directory)


def test_default_modes_keep_the_key_private_and_the_certificates_public(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, outputs=["pem", "key", "fullchain"])
    result = Installer(w).install(material(test_ca), "v1")
    assert mode_of(result.files["pem"]) == 0o600 and mode_of(result.files["key"]) == 0o600
    assert mode_of(result.files["fullchain"]) == 0o644


def test_without_pem_the_custom_link_points_at_the_version_directory(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, symlink="web", outputs=["fullchain", "key"])
    Installer(w).install(material(test_ca), "v1")
    assert os.readlink(tmp_path / "web") == "contoso.web.current"
    assert not (tmp_path / "contoso.web").exists()  # the combined-PEM path exists only with pem
    assert (tmp_path / "web" / "key.pem").is_file()


def test_the_umask_does_not_change_the_configured_modes(tmp_path: Path, test_ca: Any) -> None:
    old = os.umask(0o077)
    try:
        result = Installer(watched(tmp_path, outputs=["key", "cert"], mode="0640")).install(material(test_ca), "v1")
    finally:
        os.umask(old)
    assert mode_of(result.files["key"]) == 0o640 and mode_of(result.files["cert"]) == 0o644


@needs_root
def test_files_get_the_configured_owner_and_group(tmp_path: Path, test_ca: Any, other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    w = watched(tmp_path, outputs=["pem", "cert", "pfx"], owner="nobody", group="nogroup", mode="0640")
    result = Installer(w).install(material(test_ca), "v1")
    for path in result.files.values():
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid)
    assert result.warnings == []


def test_numeric_owner_of_the_agent_itself_works_without_root(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, outputs=["key"], owner=os.getuid(), group=os.getgid())
    result = Installer(w).install(material(test_ca), "v1")
    assert result.files["key"].stat().st_uid == os.getuid() and result.warnings == []


def test_a_failed_chown_is_a_warning_not_a_failure(tmp_path: Path, test_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(install_module.os, "fchown", refuse)
    seen: list[str] = []
    w = watched(tmp_path, outputs=["key", "cert"], owner=12345, group=12345, mode="0640")
    result = Installer(w, on_warning=seen.append).install(material(test_ca), "v1")
    # The mode is still applied, but without the group bits on the key: the group it was meant for
    # did not get the file, and the agent's own group must not read the key instead.
    assert mode_of(result.files["key"]) == 0o600 and mode_of(result.files["cert"]) == 0o644
    assert len(result.warnings) == 2 and all("Operation not permitted" in w for w in result.warnings)
    assert "group access to the key withheld" in result.warnings[0]
    assert seen == result.warnings


needs_setfacl = pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl (apt acl) is not installed")


def acl_of(path: Path) -> set[str]:
    out = subprocess.run(["getfacl", "--omit-header", "--numeric", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {line for line in out.split() if line}


@needs_setfacl
def test_further_readers_get_read_access_through_a_posix_acl_and_others_still_nothing(
        tmp_path: Path, test_ca: Any, other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    w = watched(tmp_path, outputs=["key", "fullchain"], mode="0600",
                readers=[{"user": "nobody"}, {"group": "nogroup"}])
    result = Installer(w).install(material(test_ca), "v1")
    assert result.warnings == []
    for path in result.files.values():
        entries = acl_of(path)
        assert f"user:{uid}:r--" in entries and f"group:{gid}:r--" in entries
    assert "other::---" in acl_of(result.files["key"])  # the key stays closed to everyone else
    assert mode_of(result.files["key"]) & 0o007 == 0
    # The next version gets the same ACL: it is part of writing each file, not a one-off.
    again = Installer(w).install(material(test_ca), "v2")
    assert f"user:{uid}:r--" in acl_of(again.files["key"])


def test_without_setfacl_further_readers_are_a_warning_and_the_files_are_installed(
        tmp_path: Path, test_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    w = watched(tmp_path, outputs=["key"], readers=[{"user": "nginx"}])
    result = Installer(w, on_warning=lambda _: None).install(material(test_ca), "v1")
    assert result.files["key"].is_file() and mode_of(result.files["key"]) == 0o600
    assert result.warnings == [f"cannot give u:nginx read access to {result.files['key']}: setfacl is not "
                               "installed (Debian/Ubuntu: apt install acl)"]


@needs_setfacl
def test_an_unknown_reader_is_a_warning_naming_the_final_file(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, outputs=["key"], readers=[{"user": "no-such-user-certlc"}])
    result = Installer(w, on_warning=lambda _: None).install(material(test_ca), "v1")
    [warning] = result.warnings
    assert warning.startswith(f"cannot give u:no-such-user-certlc read access to {result.files['key']}: ")
    assert ".certlc-tmp-" not in warning and result.files["key"].is_file()


def test_an_unknown_user_name_is_a_warning(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, outputs=["key"], owner="no-such-user-certlc", group="no-such-group-certlc")
    result = Installer(w, on_warning=lambda _: None).install(material(test_ca), "v1")
    assert any("no-such-user-certlc" in w for w in result.warnings)
    assert any("no-such-group-certlc" in w for w in result.warnings)
    assert result.files["key"].is_file()


def test_the_key_is_never_readable_by_others_even_while_being_written(
        tmp_path: Path, test_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """At every step between create and rename the temporary file is private to the agent's user."""
    observed: list[int] = []
    real_write, real_fchown, real_fchmod = os.write, os.fchown, os.fchmod

    def spy(fd: int) -> None:
        observed.append(stat.S_IMODE(os.fstat(fd).st_mode))

    def write(fd: int, data: Any) -> int:
        spy(fd)
        return real_write(fd, data)

    def fchown(fd: int, uid: int, gid: int) -> None:
        spy(fd)
        real_fchown(fd, uid, gid)

    def fchmod(fd: int, mode: int) -> None:
        spy(fd)  # before the final mode: still 0600, and the group was set first
        real_fchmod(fd, mode)

    monkeypatch.setattr(install_module.os, "write", write)
    monkeypatch.setattr(install_module.os, "fchown", fchown)
    monkeypatch.setattr(install_module.os, "fchmod", fchmod)
    old = os.umask(0)  # a careless umask must not widen the temporary file
    try:
        write_atomic(tmp_path / "key.pem", b"PRIVATE", mode=0o640, uid=os.getuid(), gid=os.getgid())
    finally:
        os.umask(old)
    assert observed and all(m == 0o600 for m in observed)
    assert mode_of(tmp_path / "key.pem") == 0o640


# Atomicity -----------------------------------------------------------------------------------------------------------
class Crash(BaseException):
    pass


def test_a_crash_between_write_and_rename_leaves_the_final_name_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"OLD")
    seen: dict[str, Any] = {}
    real_replace = os.replace

    def crash(src: Any, dst: Any) -> None:
        # The moment before the rename: the whole new content is in a private temporary file,
        # and the final name still holds the old content.
        seen["tmp"] = Path(src).read_bytes()
        seen["tmp_mode"] = mode_of(Path(src))
        seen["final"] = Path(dst).read_bytes()
        raise Crash

    monkeypatch.setattr(install_module.os, "replace", crash)
    with pytest.raises(Crash):
        write_atomic(target, b"NEW" * 1000, mode=0o640)
    monkeypatch.setattr(install_module.os, "replace", real_replace)
    assert seen == {"tmp": b"NEW" * 1000, "tmp_mode": 0o640, "final": b"OLD"}
    assert target.read_bytes() == b"OLD" and not temps(tmp_path)


def test_a_killed_process_leaves_no_partial_file_under_the_final_name(tmp_path: Path, test_ca: Any) -> None:
    """A real crash (os._exit at the rename) in a child process, then the next install cleans up."""
    store = tmp_path / "store"
    m = material(test_ca)
    child = textwrap.dedent(f"""
        import os, sys
        from certlc.agent import install
        install.os.replace = lambda src, dst: os._exit(9)   # die right before the rename
        install.write_atomic(install.Path({str(store / "key.pem")!r}), b"K" * 65536, mode=0o640)
    """)
    store.mkdir()
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr.decode()
    assert not (store / "key.pem").exists()
    (leftover,) = temps(store)
    assert mode_of(leftover) & 0o007 == 0  # even the crash debris is not readable by others
    assert remove_stale_temps(store) == 1 and not temps(store)

    # A crash in the middle of a whole install: .current still points at the old version.
    w = watched(store, outputs=["pem", "key"])
    Installer(w).install(m, "v1")
    crash_install = textwrap.dedent(f"""
        import os
        from certlc.agent import install
        from certlc.agent.material import decode_secret
        from certlc.agent.settings import parse_agent_settings
        w = parse_agent_settings({{"secretsManagementSettings": {{"observedCertificates": [
            {{"url": "https://contoso.vault.azure.net/secrets/web", "certificateStoreLocation": {str(store)!r},
              "certlc": {{"outputs": ["pem", "key"]}}}}]}}}}).watched[0]
        real = install.os.replace
        calls = []
        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                os._exit(9)   # the first file is in place, the second never arrives
            real(src, dst)
        install.os.replace = replace
        install.Installer(w).install(decode_secret({test_ca.issue().pfx_secret()!r}, "application/x-pkcs12"), "v2")
    """)
    proc = subprocess.run([sys.executable, "-c", crash_install], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr.decode()
    installer = Installer(w)
    assert installer.current_version() == "v1"
    assert (store / "contoso.web").read_bytes() == m.combined_pem()
    result = installer.install(m, "v3")
    assert result.previous == "v1"
    assert not (store / "contoso.web.versions" / "v2").exists()  # the partial version was never current: gone


def test_a_failed_install_keeps_the_previous_version_current(tmp_path: Path, test_ca: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    w = watched(tmp_path, outputs=["pem", "key"])
    first = material(test_ca)
    Installer(w).install(first, "v1")
    real = install_module.write_atomic

    def full_disk(path: Path, data: bytes, **kw: Any) -> list[str]:
        if path.name == "key.pem":
            raise OSError(28, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(install_module, "write_atomic", full_disk)
    with pytest.raises(InstallFailed) as info:
        Installer(w).install(material(test_ca), "v2")
    assert "No space left on device" in info.value.message
    assert Installer(w).current_version() == "v1"
    assert (tmp_path / "contoso.web").read_bytes() == first.combined_pem()
    # rollback to the version the failed install started from is a no-op: safe after a partial install
    assert Installer(w).rollback(to="v1") == "v1"


def test_an_old_extension_file_under_the_stable_name_is_replaced_by_the_link(tmp_path: Path, test_ca: Any) -> None:
    (tmp_path / "contoso.web").write_bytes(b"written by the Key Vault extension")
    m = material(test_ca)
    Installer(watched(tmp_path)).install(m, "v1")
    assert (tmp_path / "contoso.web").is_symlink() and (tmp_path / "contoso.web").read_bytes() == m.combined_pem()


def test_a_directory_in_the_way_of_a_link_is_an_error_and_left_alone(tmp_path: Path, test_ca: Any) -> None:
    (tmp_path / "web").mkdir()
    with pytest.raises(InstallFailed, match="is a directory"):
        Installer(watched(tmp_path, symlink="web")).install(material(test_ca), "v1")
    assert (tmp_path / "web").is_dir()


@pytest.mark.parametrize("version", ["../escape", "", ".hidden", "a/b"])
def test_a_version_that_is_no_key_vault_id_is_refused(tmp_path: Path, test_ca: Any, version: str) -> None:
    with pytest.raises(InstallFailed):
        Installer(watched(tmp_path)).install(material(test_ca), version)
    assert not (tmp_path / "escape").exists()


# PFX passwords -------------------------------------------------------------------------------------------------------
def test_the_pfx_password_comes_from_a_file_or_the_environment(tmp_path: Path, test_ca: Any) -> None:
    (tmp_path / "pw").write_text("from-file\nignored\n")
    m = material(test_ca)
    by_file = Installer(watched(tmp_path / "a", outputs=["pfx"], pfx={"password_file": str(tmp_path / "pw"),
                                                                      "legacy": True})).install(m, "v1")
    assert pkcs12.load_key_and_certificates(by_file.files["pfx"].read_bytes(), b"from-file")[1] == m.leaf
    by_env = Installer(watched(tmp_path / "b", outputs=["pfx"], pfx={"password_env": "WEB_PFX_PW"}),
                       environ={"WEB_PFX_PW": "from-env"}).install(m, "v1")
    assert pkcs12.load_key_and_certificates(by_env.files["pfx"].read_bytes(), b"from-env")[1] == m.leaf


def test_a_missing_pfx_password_is_a_config_error_and_nothing_is_written(tmp_path: Path, test_ca: Any) -> None:
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match="WEB_PFX_PW is not set"):
        Installer(watched(store, outputs=["pfx"], pfx={"password_env": "WEB_PFX_PW"}), environ={}).install(
            material(test_ca), "v1")
    with pytest.raises(ConfigError, match="cannot read the PFX password file"):
        Installer(watched(store, outputs=["pfx"], pfx={"password_file": str(tmp_path / "absent")})).install(
            material(test_ca), "v1")
    assert not store.exists()


# New versions, rollback, pruning -------------------------------------------------------------------------------------
def test_a_new_version_moves_only_the_current_link(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, symlink="web", outputs=["pem", "fullchain"])
    installer = Installer(w)
    v1, v2 = material(test_ca), material(test_ca)
    installer.install(v1, "v1")
    links = {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink() and p.name != "contoso.web.current"}
    result = installer.install(v2, "v2")
    assert result.previous == "v1" and installer.current_version() == "v2"
    assert {p.name: os.readlink(p) for p in tmp_path.iterdir()
            if p.is_symlink() and p.name != "contoso.web.current"} == links
    assert (tmp_path / "web").read_bytes() == v2.combined_pem()
    assert load_any((tmp_path / "contoso.web.current" / "fullchain.pem").read_bytes()).certificates[0] == v2.leaf
    assert (tmp_path / "contoso.web.versions" / "v1" / "combined.pem").read_bytes() == v1.combined_pem()


def test_rollback_points_the_links_back_at_the_previous_version(tmp_path: Path, test_ca: Any) -> None:
    w = watched(tmp_path, symlink="web", keep_versions=2)
    installer = Installer(w)
    v1, v2 = material(test_ca), material(test_ca)
    installer.install(v1, "v1")
    installer.install(v2, "v2")
    assert installer.rollback() == "v1"
    assert installer.current_version() == "v1"
    assert (tmp_path / "web").read_bytes() == v1.combined_pem()
    assert (tmp_path / "contoso.web").read_bytes() == v1.combined_pem()
    assert installer.history() == ["v1"]  # the abandoned version left the history
    installer.prune()
    assert not (tmp_path / "contoso.web.versions" / "v2").exists()
    with pytest.raises(InstallFailed, match="no earlier version"):
        installer.rollback()


def test_rollback_to_a_named_version_and_to_one_that_is_gone(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(watched(tmp_path, keep_versions=3))
    for version in ("v1", "v2", "v3"):
        installer.install(material(test_ca), version)
    assert installer.rollback(to="v1") == "v1" and installer.current_version() == "v1"
    with pytest.raises(InstallFailed, match="not on disk"):
        installer.rollback(to="v9")


def test_keep_versions_old_versions_are_kept_and_older_ones_removed(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(watched(tmp_path, keep_versions=2))
    removed: list[str] = []
    for version in ("v1", "v2", "v3", "v4", "v5"):
        removed += installer.install(material(test_ca), version).removed_versions
    versions_dir = tmp_path / "contoso.web.versions"
    assert sorted(p.name for p in versions_dir.iterdir() if p.is_dir()) == ["v3", "v4", "v5"]
    assert removed == ["v1", "v2"] and installer.history() == ["v3", "v4", "v5"]
    (versions_dir / "notes").mkdir()  # not a version certlc made: left alone
    (versions_dir / "notes" / "README").write_text("mine")
    (versions_dir / ".hidden").mkdir()
    installer.prune()
    assert (versions_dir / "notes").is_dir() and (versions_dir / ".hidden").is_dir()


def test_keep_versions_zero_keeps_only_the_current_one(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(watched(tmp_path, keep_versions=0))
    installer.install(material(test_ca), "v1")
    installer.install(material(test_ca), "v2")
    assert sorted(p.name for p in (tmp_path / "contoso.web.versions").iterdir() if p.is_dir()) == ["v2"]


def test_directories_the_agent_creates_are_traversable_under_umask_0077(tmp_path: Path, test_ca: Any) -> None:
    # The systemd unit runs with UMask=0077; a service reading through a group must still reach its files.
    store = tmp_path / "deep" / "store"
    old = os.umask(0o077)
    try:
        Installer(watched(store, outputs=["key"], mode="0640")).install(material(test_ca), "v1")
    finally:
        os.umask(old)
    for directory in (tmp_path / "deep", store, store / "contoso.web.versions", store / "contoso.web.versions" / "v1"):
        assert mode_of(directory) == 0o755, directory
