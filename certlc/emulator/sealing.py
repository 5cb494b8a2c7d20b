"""The emulator's master key and what is derived from it.

One random master key per state directory (``<state>/master.key``, mode 0600) seals every
private key at rest and keys the access tokens, the TLS key passwords and the identity header.
Each use gets its own subkey (HKDF with a purpose label), so no two uses share key material.
Keeping the master key beside the data protects against a copied state file or an accidental
``git add``, not against someone who can read the whole directory; that is enough for a local
emulator and matches what Key Vault's "keys never leave in clear" invariant needs to be tested.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certlc.files import ensure_private_dir, read_or_create_private

__all__ = ["InvalidToken", "MasterKey", "Sealer"]

MASTER_KEY_FILE = "master.key"


class MasterKey:
    """The per-emulator secret; ``derive`` gives independent subkeys by purpose."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the emulator master key must be at least 32 bytes")
        self._secret = secret

    @classmethod
    def load_or_create(cls, state_dir: Path) -> MasterKey:
        ensure_private_dir(state_dir)
        raw = read_or_create_private(
            state_dir / MASTER_KEY_FILE, base64.b64encode(secrets.token_bytes(32)) + b"\n"
        )
        try:
            return cls(base64.b64decode(raw.strip(), validate=True))
        except ValueError:
            raise ValueError(f"{state_dir / MASTER_KEY_FILE} is damaged; delete the state directory") from None

    def derive(self, purpose: str, length: int = 32) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"certlc-emulator/{purpose}".encode())
        return hkdf.derive(self._secret)

    def fernet(self, purpose: str) -> Fernet:
        return Fernet(base64.urlsafe_b64encode(self.derive(purpose)))

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return "MasterKey(<hidden>)"


class Sealer:
    """Encrypts key material for storage (Fernet: AES-128-CBC + HMAC-SHA256, authenticated)."""

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet

    def seal(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode("ascii")

    def unseal(self, token: str) -> bytes:
        return self._fernet.decrypt(token.encode("ascii"))
