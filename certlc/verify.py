"""Check what a CA returned before it goes anywhere near Key Vault (DESIGN §4 step 5).

Trust nothing the CA returns: the leaf is found by the pending CSR's public key (AD CS bundles
come in any order, sometimes without the leaf first), its subject and SANs must cover the old
certificate's, it must be valid now (within the skew tolerance), and the chain is put leaf
first by issuer links. A mismatch raises TerminalError with a reason naming it.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from certlc.errors import TerminalError
from certlc.vault import CertificateSnapshot, expected_san_set, normalised_sans
from certlc.x509 import find_by_public_key, load_certificates, load_csr, order_chain, san_strings

__all__ = ["REFUSED_RESPONSE", "verify_issued"]

# The reasons verify_issued refuses a CA's answer with: the CA issued, but not what was asked.
REFUSED_RESPONSE = frozenset({"CertificateUnreadable", "PublicKeyMismatch", "SubjectMismatch", "SanMismatch",
                              "IssuedExpired", "IssuedNotYetValid"})


def verify_issued(
    certificate_pem: str,
    chain_pem: list[str] | tuple[str, ...],
    csr_pem: str,
    snapshot: CertificateSnapshot,
    *,
    now: dt.datetime | None = None,
    skew: dt.timedelta = dt.timedelta(minutes=10),
    subject_from_names: bool = False,
) -> list[x509.Certificate]:
    """The issued certificate and its chain, leaf first, or TerminalError saying what is wrong.

    ``subject_from_names``: the CA writes the subject itself from the validated names (ACME: a CN
    that is one of the SANs, or no subject at all, as Let's Encrypt's newer profiles issue), so
    the subject need not equal the old one; the SANs still must cover the old certificate's.
    """
    now = now or dt.datetime.now(dt.UTC)
    ctx = {"vault": snapshot.vault, "certificate": snapshot.name}
    try:
        certs = load_certificates(certificate_pem.encode())
        for pem in chain_pem:
            certs.extend(load_certificates(pem.encode()))
    except Exception as exc:  # the CA's bytes are untrusted input: any parse failure is a refusal
        raise TerminalError(f"the CA's response holds no readable certificate: {exc}",
                            reason="CertificateUnreadable", **ctx) from None
    csr = load_csr(csr_pem)
    leaf = find_by_public_key(certs, csr)
    if leaf is None:
        raise TerminalError(
            "the CA returned a certificate whose public key is not the pending request's key",
            reason="PublicKeyMismatch", **ctx)
    if subject_from_names:
        _check_name_subject(leaf, snapshot, ctx)
    elif leaf.subject.rfc4514_string() != snapshot.subject:
        raise TerminalError(
            f"the issued subject {leaf.subject.rfc4514_string()!r} is not the old {snapshot.subject!r}",
            reason="SubjectMismatch", **ctx)
    missing = expected_san_set(snapshot) - normalised_sans(san_strings(leaf))
    if missing:
        raise TerminalError(f"the issued certificate lacks SANs of the old one: {sorted(missing)}",
                            reason="SanMismatch", **ctx)
    if leaf.not_valid_after_utc <= now:
        raise TerminalError(f"the issued certificate expired at {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                            reason="IssuedExpired", **ctx)
    if leaf.not_valid_before_utc > now + skew:
        raise TerminalError(
            f"the issued certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}, "
            f"beyond the {int(skew.total_seconds())} s clock-skew tolerance",
            reason="IssuedNotYetValid", **ctx)
    ordered = order_chain(certs)
    # order_chain puts the leaf first when links allow; make that certain and drop strangers.
    chain: list[x509.Certificate] = [leaf]
    current = leaf
    for cert in ordered:
        if cert is leaf or cert in chain:
            continue
        if cert.subject == current.issuer and cert != current:
            chain.append(cert)
            current = cert
    return chain


def _check_name_subject(leaf: x509.Certificate, snapshot: CertificateSnapshot, ctx: dict[str, str]) -> None:
    """A CA-written subject: nothing but CNs, each one of the certificate's own DNS names."""
    names = {n.lower() for n in san_strings(leaf)}
    for attribute in leaf.subject:
        value = str(attribute.value).lower()
        if attribute.oid != x509.NameOID.COMMON_NAME or (f"dns:{value}" not in names
                                                         and f"ip:{value}" not in names):
            raise TerminalError(
                f"the issued subject {leaf.subject.rfc4514_string()!r} names more than the certificate's "
                f"validated names (old subject {snapshot.subject!r})", reason="SubjectMismatch", **ctx)
