"""Put certificates in chain order: leaf first, then each issuer.

Key Vault's merge and every TLS server expect the leaf first. CA responses do not promise an
order (AD CS's PKCS#7 SET has none; some bundles are issuer-first), so the order is rebuilt from
the issuer links alone. Signatures are not checked here: ordering is not validation.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = ["is_issued_by", "order_chain"]


def _names_match(a: x509.Name, b: x509.Name) -> bool:
    # Equal attributes, or equal but for case/string type (PrintableString vs UTF8String): CAs
    # re-encode names, and RFC 5280 name matching ignores case.
    return a == b or a.rfc4514_string().casefold() == b.rfc4514_string().casefold()


def _key_id(cert: x509.Certificate, ext_class: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(ext_class).value
    except (x509.ExtensionNotFound, ValueError):
        return None  # absent, or an extension cryptography cannot read: no key id to compare
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    return None


def _is_self_issued(cert: x509.Certificate) -> bool:
    try:
        return _names_match(cert.subject, cert.issuer)
    except ValueError:
        return False


def is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` names ``cert``'s issuer: subject equals issuer name, and when both
    carry them, the authority key identifier equals the issuer's subject key identifier."""
    if cert == issuer:
        return False
    try:
        if not _names_match(cert.issuer, issuer.subject):
            return False
    except ValueError:
        return False  # a name cryptography cannot decode links to nothing
    aki = _key_id(cert, x509.AuthorityKeyIdentifier)
    ski = _key_id(issuer, x509.SubjectKeyIdentifier)
    return aki is None or ski is None or aki == ski


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def order_chain(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """``certs`` leaf first, each followed by its issuer; certificates outside that chain follow,
    themselves ordered the same way. Duplicates are dropped.

    The result does not depend on the input order: the leaf is the end of the longest chain (then
    a non-CA certificate, then the newest, then the lowest SHA-256 fingerprint), and an issuer
    with a matching key identifier and the latest expiry is preferred among several candidates
    (cross-signed intermediates). A self-issued certificate ends its chain.
    """
    unique: list[x509.Certificate] = []
    seen: set[bytes] = set()
    for cert in certs:
        fp = _fingerprint(cert)
        if fp not in seen:
            seen.add(fp)
            unique.append(cert)
    unique.sort(key=_fingerprint)

    def parent_rank(child: x509.Certificate, parent: x509.Certificate) -> tuple[bool, float, bytes]:
        confirmed = _key_id(child, x509.AuthorityKeyIdentifier) is not None \
            and _key_id(parent, x509.SubjectKeyIdentifier) is not None
        return (not confirmed, -parent.not_valid_after_utc.timestamp(), _fingerprint(parent))

    parents: dict[int, list[int]] = {}
    for i, cert in enumerate(unique):
        found = [] if _is_self_issued(cert) else [j for j, other in enumerate(unique) if is_issued_by(cert, other)]
        parents[i] = sorted(found, key=lambda j, c=cert: parent_rank(c, unique[j]))

    def walk(start: int, pool: set[int]) -> list[int]:
        path = [start]
        current = start
        while True:
            nxt = next((p for p in parents[current] if p in pool and p not in path), None)
            if nxt is None:
                return path
            path.append(nxt)
            current = nxt

    ordered: list[x509.Certificate] = []
    pool = set(range(len(unique)))
    while pool:
        issuers = {p for i in pool for p in parents[i] if p in pool}
        leaves = sorted(pool - issuers) or sorted(pool)  # all issuers of each other: a loop
        paths = [walk(i, pool) for i in leaves]
        best = min(paths, key=lambda path: (
            -len(path),
            _is_ca(unique[path[0]]),
            -unique[path[0]].not_valid_before_utc.timestamp(),
            _fingerprint(unique[path[0]]),
        ))
        ordered.extend(unique[i] for i in best)
        pool -= set(best)
    return ordered
