"""The Windows certificate store (``Cert:\\LocalMachine\\My`` by default), as the Windows extension fills it.

Used only on Windows, and only for a certificate whose settings name a ``certificateStoreName``
(see :func:`certlc.agent.settings._windows_store`); everything else keeps the file installer.

:class:`StoreInstaller` has the file installer's interface (``current_version``, ``install``,
``rollback``, ``history``, ``prune``), so the poller and :func:`certlc.agent.deploy.deploy` use
it unchanged. An install:

1. writes the leaf and its key to a PFX in a new private temporary directory, encrypted with a
   random one-time password (the legacy PBE-SHA1-3DES encryption with ``certlc.pfx.legacy``,
   for Windows Server 2016 and older);
2. runs ``Import-PfxCertificate`` into ``Cert:\\<certificateStoreLocation>\\<certificateStoreName>``
   (``-Exportable`` only with ``keyExportable``), sets the friendly name (``certlc.name``, default
   ``<vault>.<secret>``) and, for each of ``accounts``, adds a Read rule to the ACL of the private
   key's file. That is what the certificates console's "Manage Private Keys" does. The key file is
   found from the key's unique name: ``%ProgramData%\\Microsoft\\Crypto\\Keys`` for CNG keys and
   ``...\\Crypto\\RSA\\MachineKeys`` for CAPI keys. This is the documented approach, chosen over
   ``certutil -repairstore``, which takes an SDDL string and so SIDs instead of account names;
3. deletes the PFX and its directory, whatever happened;
4. records the version and its thumbprint in ``<state_dir>/winstore/<stem>.json``;
5. removes versions beyond ``keep_versions`` from the store with their keys
   (``Remove-Item -DeleteKey``), only after the new version is in.

Only the leaf and its key go into the store. The issuers are not imported: Windows finds them
through the intermediate store or AIA.

PowerShell gets a constant script (``-EncodedCommand``) and every value, the password included,
through environment variables of the child process, so nothing from the settings or the vault
is ever parsed as PowerShell and the password is not on a command line. The commands run
through a :data:`Runner`, so the unit tests record the exact command lines with a fake one.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.agent.install import InstallFailed, InstallResult, make_dirs, write_atomic
from certlc.agent.material import Material
from certlc.agent.settings import Watched, WindowsStore

__all__ = ["IMPORT_SCRIPT", "POWERSHELL", "REMOVE_SCRIPT", "RENAME_SCRIPT", "RunResult", "Runner", "StoreInstaller",
           "powershell_argv", "subprocess_runner"]

POWERSHELL = "powershell.exe"
_THUMBPRINT = re.compile(r"[0-9A-F]{40}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

# Import the PFX, set the friendly name, give `accounts` read access to the private key file.
# Values come from $env:CERTLC_* only; the last output line is the imported thumbprint.
IMPORT_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
$password = ConvertTo-SecureString -String $env:CERTLC_PFX_PASSWORD -AsPlainText -Force
$import = @{ FilePath = $env:CERTLC_PFX_PATH; CertStoreLocation = $env:CERTLC_STORE_PATH; Password = $password }
if ($env:CERTLC_EXPORTABLE -eq '1') { $import.Exportable = $true }
$null = Import-PfxCertificate @import
$cert = Get-Item -LiteralPath (Join-Path $env:CERTLC_STORE_PATH $env:CERTLC_THUMBPRINT)
$cert.FriendlyName = $env:CERTLC_FRIENDLY_NAME
$accounts = @($env:CERTLC_ACCOUNTS -split "`n" | Where-Object { $_ -ne '' })
if ($accounts.Count -gt 0) {
  $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey($cert)
  if ($null -eq $key) { $key = [System.Security.Cryptography.X509Certificates.ECDsaCertificateExtensions]::GetECDsaPrivateKey($cert) }
  if ($key -is [System.Security.Cryptography.RSACng] -or $key -is [System.Security.Cryptography.ECDsaCng]) {
    $file = Join-Path $env:ProgramData ('Microsoft\Crypto\Keys\' + $key.Key.UniqueName)
  } else {
    $file = Join-Path $env:ProgramData ('Microsoft\Crypto\RSA\MachineKeys\' + $key.CspKeyContainerInfo.UniqueKeyContainerName)
  }
  $acl = Get-Acl -LiteralPath $file
  foreach ($account in $accounts) {
    $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($account, 'Read', 'Allow')
    $acl.AddAccessRule($rule)
  }
  Set-Acl -LiteralPath $file -AclObject $acl
}
$cert.Thumbprint
"""

# Remove one certificate and its private key from the store (absent: nothing to do).
REMOVE_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
$path = Join-Path $env:CERTLC_STORE_PATH $env:CERTLC_THUMBPRINT
if (Test-Path -LiteralPath $path) { Remove-Item -LiteralPath $path -DeleteKey }
"""

# Set the friendly name of a certificate already in the store (after a rollback).
RENAME_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
$cert = Get-Item -LiteralPath (Join-Path $env:CERTLC_STORE_PATH $env:CERTLC_THUMBPRINT)
$cert.FriendlyName = $env:CERTLC_FRIENDLY_NAME
"""


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


# run(argv, env) -> RunResult: env holds only the values for the script (added to the agent's own).
Runner = Callable[[Sequence[str], Mapping[str, str]], RunResult]


def powershell_argv(script: str) -> list[str]:
    """The command line running ``script``: constant text, UTF-16LE base64 as -EncodedCommand expects."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [POWERSHELL, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand", encoded]


def subprocess_runner(timeout: float = 120) -> Runner:
    def run(argv: Sequence[str], env: Mapping[str, str]) -> RunResult:
        try:
            proc = subprocess.run(list(argv), env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return RunResult(124, "", f"did not finish within {timeout:g} s")
        except OSError as exc:
            return RunResult(127, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class StoreInstaller:
    """One observed certificate in a Windows certificate store; versions tracked in a state file."""

    def __init__(self, watched: Watched, *, runner: Runner | None = None,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        if watched.windows_store is None:
            raise ValueError(f"{watched.key} has no Windows store (certificateStoreName)")
        self.watched = watched
        self.options = watched.options
        self.store: WindowsStore = watched.windows_store
        self.state_file = watched.store / f"{watched.stem}.json"
        self.friendly_name = watched.options.name or watched.stem
        self._run = runner or subprocess_runner()
        self._now = now

    # --- state ---------------------------------------------------------------------------------
    def _state(self) -> dict:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"current": None, "versions": []}
        versions = [v for v in data.get("versions", []) if isinstance(v, dict)
                    and _VERSION.fullmatch(str(v.get("version", ""))) and _THUMBPRINT.fullmatch(str(v.get("thumbprint", "")))]
        current = data.get("current")
        return {"current": current if any(v["version"] == current for v in versions) else None, "versions": versions}

    def _save(self, state: dict) -> None:
        make_dirs(self.state_file.parent)
        write_atomic(self.state_file, json.dumps(state, indent=1).encode(), mode=0o644)

    def current_version(self) -> str | None:
        return self._state()["current"]

    def history(self) -> list[str]:
        return [v["version"] for v in self._state()["versions"]]

    def entry(self, version: str | None = None) -> dict | None:
        """The state entry of ``version`` (default: the current one): thumbprint, not_after, installed_at."""
        state = self._state()
        version = version or state["current"]
        return next((dict(v) for v in state["versions"] if v["version"] == version), None)

    def thumbprint(self, version: str | None = None) -> str | None:
        """The thumbprint of ``version`` (default: the current one) in the store."""
        state = self._state()
        version = version or state["current"]
        return next((v["thumbprint"] for v in state["versions"] if v["version"] == version), None)

    # --- commands ------------------------------------------------------------------------------
    def _powershell(self, script: str, env: Mapping[str, str], what: str) -> str:
        result = self._run(powershell_argv(script), {"CERTLC_STORE_PATH": self.store.path, **env})
        if result.returncode != 0:
            detail = _last_line(result.stderr) or _last_line(result.stdout)
            raise InstallFailed(f"{self.watched.key}: {what} in {self.store.path} failed (exit {result.returncode})"
                                + (f": {detail}" if detail else ""), certificate=self.watched.key)
        return result.stdout

    def _pfx(self, material: Material, password: bytes) -> bytes:
        if self.options.pfx.legacy:
            encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
                          .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                          .hmac_hash(hashes.SHA1())  # noqa: S303 - what Windows Server 2016 can import
                          .build(password))
        else:
            encryption = serialization.BestAvailableEncryption(password)
        return pkcs12.serialize_key_and_certificates(self.friendly_name.encode(), material.key,  # type: ignore[arg-type]
                                                     material.leaf, None, encryption)

    # --- install -------------------------------------------------------------------------------
    def install(self, material: Material, version: str) -> InstallResult:
        """Import ``version`` into the store and make it the current one; then prune old versions."""
        if not _VERSION.fullmatch(version):
            raise InstallFailed(f"version {version!r} is not a Key Vault version id")
        previous = self.current_version()
        password = secrets.token_urlsafe(32)
        temp_dir = Path(tempfile.mkdtemp(prefix="certlc-pfx-"))  # private to the agent's account
        try:
            pfx_path = temp_dir / "import.pfx"
            fd = os.open(pfx_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._pfx(material, password.encode()))
            out = self._powershell(IMPORT_SCRIPT, {
                "CERTLC_PFX_PATH": str(pfx_path),
                "CERTLC_PFX_PASSWORD": password,
                "CERTLC_THUMBPRINT": material.sha1,
                "CERTLC_EXPORTABLE": "1" if self.store.exportable else "0",
                "CERTLC_FRIENDLY_NAME": self.friendly_name,
                "CERTLC_ACCOUNTS": "\n".join(self.store.accounts),
            }, f"importing version {version}")
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        thumbprint = _last_line(out).upper()
        if thumbprint != material.sha1:
            raise InstallFailed(f"{self.watched.key}: the store reports thumbprint {thumbprint or '(none)'} after "
                                f"importing version {version}, expected {material.sha1}", certificate=self.watched.key)
        state = self._state()
        versions = [v for v in state["versions"] if v["version"] != version]
        versions.append({"version": version, "thumbprint": thumbprint,
                         "not_after": material.not_after.isoformat(timespec="seconds"),
                         "installed_at": self._now().isoformat(timespec="seconds")})
        try:
            self._save({"current": version, "versions": versions})
        except OSError as exc:
            raise InstallFailed(f"{self.watched.key}: version {version} is in {self.store.path} but its state "
                                f"cannot be saved in {self.state_file}: {exc.strerror or exc}") from None
        removed = self.prune()
        return InstallResult(version=version, previous=previous, directory=self.state_file.parent, files={},
                             removed_versions=removed)

    def rollback(self, to: str | None = None) -> str | None:
        """Make ``to`` (default: the version before the current one) current again; the abandoned one leaves the store."""
        state = self._state()
        current = state["current"]
        names = [v["version"] for v in state["versions"]]
        if to is None:
            older = names[:names.index(current)] if current in names else names[:-1]
            if not older:
                raise InstallFailed(f"{self.watched.key}: no earlier version kept to roll back to")
            to = older[-1]
        target = next((v for v in state["versions"] if v["version"] == to), None)
        if target is None:
            raise InstallFailed(f"{self.watched.key}: version {to} is not in {self.store.path}, cannot roll back to it")
        if current == to:
            return to
        self._powershell(RENAME_SCRIPT, {"CERTLC_THUMBPRINT": target["thumbprint"],
                                         "CERTLC_FRIENDLY_NAME": self.friendly_name}, f"renaming version {to}")
        abandoned = next((v for v in state["versions"] if v["version"] == current), None)
        if abandoned is not None and abandoned["thumbprint"] != target["thumbprint"]:
            with contextlib.suppress(InstallFailed):  # left in the store; pruned next time
                self._powershell(REMOVE_SCRIPT, {"CERTLC_THUMBPRINT": abandoned["thumbprint"]},
                                 f"removing version {current}")
        versions = [v for v in state["versions"] if v["version"] != current]
        try:
            self._save({"current": to, "versions": versions})
        except OSError as exc:
            raise InstallFailed(f"cannot roll {self.watched.key} back to {to}: {exc.strerror or exc}") from None
        return to

    def prune(self) -> list[str]:
        """Remove versions beyond the current one and ``keep_versions`` older ones from the store."""
        state = self._state()
        current = state["current"]
        older = [v for v in state["versions"] if v["version"] != current]
        keep_n = self.options.keep_versions
        drop = older[:-keep_n] if keep_n else older
        keep_thumbprints = {v["thumbprint"] for v in state["versions"] if v not in drop}
        removed: list[str] = []
        for entry in drop:
            if entry["thumbprint"] not in keep_thumbprints:
                try:
                    self._powershell(REMOVE_SCRIPT, {"CERTLC_THUMBPRINT": entry["thumbprint"]},
                                     f"removing version {entry['version']}")
                except InstallFailed:
                    continue  # still in the store; tried again after the next install
            removed.append(entry["version"])
        if removed:
            with contextlib.suppress(OSError):
                self._save({"current": current, "versions": [v for v in state["versions"]
                                                             if v["version"] not in removed]})
        return sorted(removed)
