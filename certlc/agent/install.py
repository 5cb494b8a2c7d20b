"""Put a certificate's files on disk: one directory per version, stable symlinks, atomic writes.

Layout in the certificate's store location (``<stem>`` is ``<vault>.<secret>`` unless set)::

    <stem>.versions/<version>/combined.pem   key, leaf, chain (the Linux extension's file)
                              cert.pem key.pem chain.pem fullchain.pem cert.pfx   (as configured)
    <stem>.versions/.history                 versions in install order (JSON), newest last
    <stem>.current  -> <stem>.versions/<version>    the one link that moves on install / rollback
    <stem>          -> <stem>.current/combined.pem  the extension's path (when pem is an output)
    <customSymbolicLinkName> -> <stem>.current/combined.pem (or the directory without pem)
    <certlc.link>   -> <store>/<stem>.current       a stable link anywhere, to the version directory

Every file is written to a temporary file in its own directory, fsynced, given its owner and
final mode, renamed over the final name, and the directory fsynced; a file holding the private
key is created ``0600`` (``O_EXCL``, never following a link) and only then handed to its group
and given its configured mode, so it is never readable by others, not even for a moment. Links
move the same way (a new link renamed over the old). A failed chown is a warning. Only the
``.current`` link ever changes after the first install, so readers see the old version or the
new one, never a mix. ``keep_versions`` old versions stay for rollback; older ones are removed.

:func:`write_atomic` and :func:`replace_symlink` are the primitives; :class:`Installer` is one
certificate's files.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from certlc.agent.material import Material
from certlc.agent.settings import KEY_FORMS as _KEY_FORMS
from certlc.agent.settings import Watched
from certlc.errors import CertlcError, ConfigError

__all__ = [
    "FILE_NAMES",
    "InstallFailed",
    "InstallResult",
    "Installer",
    "Ownership",
    "fsync_dir",
    "grant_readers",
    "make_dirs",
    "remove_stale_temps",
    "replace_symlink",
    "resolve_ownership",
    "write_atomic",
]

log = logging.getLogger("certlc.agent")

# The file each output form is written to inside a version directory.
FILE_NAMES = {"pem": "combined.pem", "cert": "cert.pem", "key": "key.pem", "chain": "chain.pem",
              "fullchain": "fullchain.pem", "pfx": "cert.pfx"}
_TEMP_MARK = ".certlc-tmp-"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_HISTORY = ".history"
_LAYOUT = ".layout"  # the settings the current files were written with (see Installer.layout_matches)


class InstallFailed(CertlcError):
    """The files could not be written; the previous version is still the current one."""

    reason = "InstallFailed"


@dataclass(frozen=True)
class Ownership:
    """Resolved owner and group (-1: leave as is) plus the warnings resolving them gave."""

    uid: int = -1
    gid: int = -1
    warnings: tuple[str, ...] = ()


def resolve_ownership(owner: str | int | None, group: str | int | None) -> Ownership:
    """Numeric ids of ``owner``/``group`` (names or numbers); unknown names become warnings."""
    warnings: list[str] = []
    uid = gid = -1
    if isinstance(owner, int):
        uid = owner
    elif owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            warnings.append(f"owner {owner!r} is not a user on this host; files keep the agent's owner")
    if isinstance(group, int):
        gid = group
    elif group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            warnings.append(f"group {group!r} is not a group on this host; files keep the agent's group")
    return Ownership(uid, gid, tuple(warnings))


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{_TEMP_MARK}{secrets.token_hex(6)}")


def grant_readers(path: Path, readers: Sequence[str], *, shown: Path | None = None) -> list[str]:
    """Give each of ``readers`` (``u:NAME`` / ``g:NAME``) read access to ``path`` through a POSIX
    ACL; the warnings. setfacl (Debian's ``acl`` package) does it: it knows the xattr format and
    recomputes the mask, and it is on every distribution that has ACLs."""
    if not readers:
        return []
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        return [f"cannot give {', '.join(readers)} read access to {shown or path}: setfacl is not installed "
                "(Debian/Ubuntu: apt install acl)"]
    warnings = []
    for reader in readers:  # one at a time: one unknown name must not cost the others their access
        what = f"cannot give {reader} read access to {shown or path}"
        try:
            proc = subprocess.run([setfacl, "--modify", f"{reader}:r", "--", str(path)],
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            warnings.append(f"{what}: {type(exc).__name__}")
            continue
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.replace(str(path), str(shown or path)).split())[:300]
            warnings.append(f"{what}: {detail or f'setfacl exit {proc.returncode}'}")
    return warnings


def write_atomic(path: Path, data: bytes, *, mode: int, uid: int = -1, gid: int = -1,
                 readers: Sequence[str] = (), private: bool = False) -> list[str]:
    """Write ``data`` to ``path`` atomically with ``mode``, owner and ACL readers; the warnings
    (failed chown or setfacl).

    The temporary file is created ``0600`` with ``O_EXCL | O_NOFOLLOW`` in ``path``'s directory,
    so it is never readable by others and never a link someone planted; it gets its owner first,
    then its mode and ACL, then replaces ``path``. On any error the temporary file is removed and
    ``path`` is unchanged.
    """
    warnings: list[str] = []
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            if uid != -1 or gid != -1:
                try:
                    os.fchown(fd, uid, gid)
                except OSError as exc:
                    withheld = ""
                    if private and mode & 0o070:  # the agent's own group must not get the key instead
                        mode &= 0o700
                        withheld = "; group access to the key withheld"
                    warnings.append(f"cannot give {path} to uid {uid} gid {gid}: {exc.strerror or exc}; "
                                    f"it keeps the agent's owner{withheld}")
            # A default ACL on the directory would give its entries access to the new file, key
            # included; certlc's modes (and readers) are the whole truth about who reads it.
            with contextlib.suppress(OSError, AttributeError):
                os.removexattr(fd, "system.posix_acl_access")
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        warnings += grant_readers(tmp, readers, shown=path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return warnings


def make_dirs(directory: Path, mode: int = 0o755) -> None:
    """Create ``directory`` and missing parents with ``mode`` whatever the umask (existing ones are left as they are).

    Under the systemd unit's ``UMask=0077`` a plain mkdir would make the version directories
    0700, and a service reading its files through a group could not reach them.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(path, mode)


def replace_symlink(link: Path, target: str | Path) -> None:
    """Point ``link`` at ``target`` atomically (a new link renamed over the old one).

    A regular file at ``link`` (the extension's own file, say) is replaced; a real directory
    there is an error, never removed.
    """
    if link.is_dir() and not link.is_symlink():
        raise InstallFailed(f"{link} is a directory, not a link; move it away so certlc can link it")
    tmp = _temp_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_stale_temps(directory: Path) -> int:
    """Remove temporary files a crashed write left in ``directory``; how many there were."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if _TEMP_MARK in entry.name and (entry.is_symlink() or entry.is_file()):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
    return removed


@dataclass
class InstallResult:
    """What one install did: the version now current, the one before, the files, the warnings."""

    version: str
    previous: str | None
    directory: Path
    files: dict[str, Path]
    warnings: list[str] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)


class Installer:
    """One observed certificate's files in its store location."""

    def __init__(self, watched: Watched, *, environ: Mapping[str, str] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.watched = watched
        self.options = watched.options
        self.store = watched.store
        self.versions_dir = watched.store / f"{watched.stem}.versions"
        self.current_link = watched.store / f"{watched.stem}.current"
        self._environ = os.environ if environ is None else environ
        self._on_warning = on_warning
        self._layout: str | None = None

    # --- state ---------------------------------------------------------------------------------
    def current_version(self) -> str | None:
        """The version ``.current`` points at, or None before the first install."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if (self.versions_dir / name).is_dir() else None

    def history(self) -> list[str]:
        """Installed versions, oldest first (the current one last unless rolled back)."""
        try:
            data = json.loads((self.versions_dir / _HISTORY).read_text(encoding="utf-8"))
            versions = [v for v in data.get("versions", []) if isinstance(v, str) and _VERSION.fullmatch(v)]
        except (OSError, ValueError, AttributeError):
            versions = []
        return versions

    def layout(self) -> str:
        """A digest of the settings that shape the files on disk: when it changes, the current
        version is written again (new outputs, modes, owners, readers, links, reload, verify)."""
        if self._layout is None:  # the settings do not change while the agent runs: once per process
            shaping = self.options.model_dump(mode="json", exclude={"keep_versions", "reload_timeout"})
            shaping["symlink"] = self.watched.symlink_name
            self._layout = hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()
        return self._layout

    def layout_matches(self) -> bool:
        """Whether the installed files were written with today's settings (True before any install)."""
        try:
            return (self.versions_dir / _LAYOUT).read_text(encoding="utf-8").strip() == self.layout()
        except OSError:
            return True  # nothing installed yet, or installed before layouts were recorded: as they are

    def _write_history(self, versions: list[str]) -> None:
        body = json.dumps({"versions": versions}, indent=1).encode()
        write_atomic(self.versions_dir / _HISTORY, body, mode=0o644)

    def path_of(self, form: str, version: str | None = None) -> Path:
        """The stable path of an output form (through ``.current``), or a version's own file."""
        base = self.versions_dir / version if version else self.current_link
        return base / FILE_NAMES[form]

    # --- install -------------------------------------------------------------------------------
    def install(self, material: Material, version: str) -> InstallResult:
        """Write every output form of ``material`` as ``version`` and make it the current one.

        Raises InstallFailed (or ConfigError for an unreadable PFX password) with the previous
        version still current; the partial version directory is harmless and removed later.
        """
        if not _VERSION.fullmatch(version):
            raise InstallFailed(f"version {version!r} is not a Key Vault version id")
        password = self._pfx_password() if "pfx" in self.options.outputs else b""
        owners = resolve_ownership(self.options.owner, self.options.group)
        readers = [q for entry in self.options.readers for q in entry.acl_entries()]
        warnings = list(owners.warnings)
        previous = self.current_version()
        if previous == version:  # the current version again (its reload or verify failed before)
            older = [v for v in self.history() if v != version and (self.versions_dir / v).is_dir()]
            previous = older[-1] if older else None
        directory = self.versions_dir / version
        files: dict[str, Path] = {}
        try:
            make_dirs(self.store)
            make_dirs(self.versions_dir)
            remove_stale_temps(self.store)
            remove_stale_temps(self.versions_dir)
            make_dirs(directory)
            remove_stale_temps(directory)
            for form in self.options.outputs:
                data = material.render(form, password=password, legacy=self.options.pfx.legacy,
                                       name=self.watched.secret_name.encode())
                mode = self.options.mode if form in _KEY_FORMS else self.options.public_mode
                path = directory / FILE_NAMES[form]
                if form in _KEY_FORMS and self.options.group is not None and owners.gid == -1:
                    mode &= 0o700  # the group is unknown here: the agent's own group must not read the key
                warnings += write_atomic(path, data, mode=mode, uid=owners.uid, gid=owners.gid, readers=readers,
                                         private=form in _KEY_FORMS)
                files[form] = path
            fsync_dir(directory)
            # The stable links all go through .current, so they can be made before it moves: a link
            # that cannot be made fails the install with the previous version still current.
            self._static_links()
            history = [v for v in self.history() if v != version] + [version]
            self._write_history(history)
            replace_symlink(self.current_link, f"{self.versions_dir.name}/{version}")
            write_atomic(self.versions_dir / _LAYOUT, self.layout().encode() + b"\n", mode=0o644)
        except OSError as exc:
            raise InstallFailed(f"cannot install {self.watched.key} version {version} in {self.store}: "
                                f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""),
                                certificate=self.watched.key, version=version) from None
        removed = self.prune()
        for warning in warnings:
            self._warn(warning)
        return InstallResult(version=version, previous=previous, directory=directory, files=files,
                             warnings=warnings, removed_versions=removed)

    def _static_links(self) -> None:
        """The links that never change once made: they all go through ``.current``."""
        pem = "pem" in self.options.outputs
        through_current = f"{self.current_link.name}/{FILE_NAMES['pem']}" if pem else self.current_link.name
        wanted: list[tuple[Path, str]] = []
        if pem:
            wanted.append((self.store / self.watched.stem, through_current))
        if self.watched.symlink_name:
            wanted.append((self.store / self.watched.symlink_name, through_current))
        if self.options.link is not None:
            make_dirs(self.options.link.parent)
            wanted.append((self.options.link, str(self.current_link)))
        for link, target in wanted:
            if not (link.is_symlink() and os.readlink(link) == target):
                replace_symlink(link, target)

    def _pfx_password(self) -> bytes:
        pfx = self.options.pfx
        if pfx.password_file is not None:
            try:
                text = pfx.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read the PFX password file {pfx.password_file}: "
                                  f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
                                  reason="PasswordUnreadable") from None
            password = (text.splitlines() or [""])[0]
            if not password:  # an empty password would write the key unencrypted, silently
                raise ConfigError(f"the PFX password file {pfx.password_file} is empty", reason="PasswordUnreadable")
            return password.encode()
        if pfx.password_env is not None:
            if not self._environ.get(pfx.password_env):
                raise ConfigError(f"the PFX password variable {pfx.password_env} is not set or empty",
                                  reason="PasswordUnreadable")
            return self._environ[pfx.password_env].encode()
        return b""

    # --- rollback and pruning ------------------------------------------------------------------
    def rollback(self, to: str | None = None) -> str | None:
        """Point ``.current`` back at ``to`` (default: the version installed before the current one).

        Safe after a partial install: an install that failed never moved ``.current``, so rolling
        back to the version its result named as ``previous`` is a no-op. The abandoned version
        leaves the history (its directory goes at the next prune). Returns the version now
        current; raises InstallFailed when there is nothing to go back to.
        """
        current = self.current_version()
        history = self.history()
        if to is None:
            older = history[:history.index(current)] if current in history else history[:-1]
            candidates = [v for v in reversed(older) if (self.versions_dir / v).is_dir()]
            if not candidates:
                raise InstallFailed(f"{self.watched.key}: no earlier version kept to roll back to "
                                    "(keep_versions is 0, or this is the first install)")
            to = candidates[0]
        if not _VERSION.fullmatch(to) or not (self.versions_dir / to).is_dir():
            raise InstallFailed(f"{self.watched.key}: version {to} is not on disk, cannot roll back to it")
        if current == to:
            return to
        try:
            replace_symlink(self.current_link, f"{self.versions_dir.name}/{to}")
            self._static_links()
            remaining = [v for v in history if v != current]
            if to not in remaining:
                remaining.append(to)
            self._write_history(remaining)
        except OSError as exc:
            raise InstallFailed(f"cannot roll {self.watched.key} back to {to}: {exc.strerror or exc}") from None
        return to

    def prune(self) -> list[str]:
        """Remove version directories beyond the current one and ``keep_versions`` older ones."""
        current = self.current_version()
        history = self.history()
        older = [v for v in history if v != current]
        keep_n = self.options.keep_versions
        keep = {current, *(older[-keep_n:] if keep_n else [])} - {None}
        removed: list[str] = []
        try:
            entries = list(self.versions_dir.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name in keep or not entry.is_dir() or entry.is_symlink() or not _VERSION.fullmatch(entry.name):
                continue
            if entry.name not in history and not _only_certlc_files(entry):
                continue  # not a version certlc wrote (nor a partial one): someone else's directory
            try:
                shutil.rmtree(entry)
                removed.append(entry.name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    self._warn(f"cannot remove old version {entry}: {exc.strerror or exc}")
        if removed:
            with contextlib.suppress(OSError):
                self._write_history([v for v in history if v in keep])
                fsync_dir(self.versions_dir)
        return sorted(removed)

    def _warn(self, message: str) -> None:
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            log.warning("%s: %s", self.watched.key, message)


def _only_certlc_files(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but output files and temporary files certlc writes."""
    names = set(FILE_NAMES.values())
    try:
        return all(e.name in names or _TEMP_MARK in e.name for e in directory.iterdir())
    except OSError:
        return False
