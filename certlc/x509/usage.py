"""Key usage as Key Vault names it, and as cryptography builds it."""

from __future__ import annotations

from cryptography import x509

__all__ = ["KEY_USAGE_FIELDS", "key_usage", "key_usage_names"]

# Key Vault's key_usage names -> cryptography's KeyUsage arguments, in Key Vault's order.
KEY_USAGE_FIELDS = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}


def key_usage(names: list[str]) -> x509.KeyUsage:
    """The KeyUsage extension value for Key Vault usage ``names`` (unknown names raise KeyError)."""
    flags = dict.fromkeys(KEY_USAGE_FIELDS.values(), False)
    for name in names:
        flags[KEY_USAGE_FIELDS[name]] = True
    return x509.KeyUsage(**flags)


def key_usage_names(usage: x509.KeyUsage) -> list[str]:
    """Key Vault names of the usages set in ``usage``."""
    names = []
    for name, field in KEY_USAGE_FIELDS.items():
        try:
            if getattr(usage, field):
                names.append(name)
        except ValueError:  # encipher_only/decipher_only are undefined without keyAgreement
            continue
    return names
