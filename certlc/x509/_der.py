"""Just enough DER walking for the cases cryptography's loaders do not cover.

cryptography parses every object certlc reads; this module only answers questions around it:
where the first DER element ends (OpenSSL ``TRUSTED CERTIFICATE`` aux data, trailing padding),
whether a blob has the shape of a PFX (so that a load failure means "password", not "garbage"),
and which certificates a PKCS#7 SignedData holds and in what order. AD CS writes that SET in
non-DER order; cryptography 50 falls back to BER with a warning and says it may refuse in a
future release, so certlc keeps its own way to reach the certificates.
"""

from __future__ import annotations

__all__ = [
    "first_element",
    "is_der_set_order",
    "looks_like_pfx",
    "pkcs7_certificate_ders",
]

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OID = 0x06
_CONTEXT_0 = 0xA0
# Content OIDs 1.2.840.113549.1.7.1 (data) and .7.2 (signedData), DER content octets.
_OID_PKCS7_DATA = bytes.fromhex("2a864886f70d010701")
_OID_PKCS7_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")


def _tlv(data: bytes, offset: int, limit: int | None = None) -> tuple[int, int, int]:
    """Tag byte, content start and end of the element at ``offset``; ValueError when malformed."""
    limit = len(data) if limit is None else limit
    if offset + 2 > limit:
        raise ValueError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not expected here")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ValueError("indefinite-length BER element")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > limit:
            raise ValueError("DER length out of range")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    end = pos + length
    if end > limit:
        raise ValueError("truncated DER element")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, end) of each element between ``start`` and ``end``."""
    out = []
    pos = start
    while pos < end:
        tag, content, stop = _tlv(data, pos, end)
        out.append((tag, pos, content, stop))
        pos = stop
    return out


def first_element(data: bytes) -> bytes | None:
    """The bytes of the first DER element, or None when the data does not start with one."""
    try:
        _, _, end = _tlv(data, 0)
    except ValueError:
        return None
    return data[:end]


def looks_like_pfx(data: bytes) -> bool:
    """True when ``data`` has PFX's outer shape: SEQUENCE { INTEGER 3, ContentInfo(data|signedData), ... }."""
    try:
        tag, start, end = _tlv(data, 0)
        if tag != _SEQUENCE:
            return False
        kids = _children(data, start, end)
        if len(kids) < 2 or kids[0][0] != _INTEGER or data[kids[0][2]:kids[0][3]] != b"\x03":
            return False
        tag, _, content, stop = kids[1]
        if tag != _SEQUENCE:
            return False
        inner = _children(data, content, stop)
    except ValueError:
        return False
    return bool(inner) and inner[0][0] == _OID and \
        data[inner[0][2]:inner[0][3]] in (_OID_PKCS7_DATA, _OID_PKCS7_SIGNED_DATA)


def pkcs7_certificate_ders(data: bytes) -> list[bytes] | None:
    """The certificate elements of a DER PKCS#7 SignedData in file order; None when it is not one.

    ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SignedData }
    SignedData ::= SEQUENCE { version, digestAlgorithms SET, contentInfo SEQUENCE,
                              certificates [0] IMPLICIT SET OF Certificate OPTIONAL, ... }
    """
    try:
        tag, start, end = _tlv(data, 0)
        if tag != _SEQUENCE:
            return None
        info = _children(data, start, end)
        if len(info) < 2 or info[0][0] != _OID or data[info[0][2]:info[0][3]] != _OID_PKCS7_SIGNED_DATA \
                or info[1][0] != _CONTEXT_0:
            return None
        signed = _children(data, info[1][2], info[1][3])
        if len(signed) != 1 or signed[0][0] != _SEQUENCE:
            return None
        fields = _children(data, signed[0][2], signed[0][3])
        if len(fields) < 3 or [f[0] for f in fields[:3]] != [_INTEGER, _SET, _SEQUENCE]:
            return None
        if len(fields) < 4 or fields[3][0] != _CONTEXT_0:
            return []
        certs = _children(data, fields[3][2], fields[3][3])
    except ValueError:
        return None
    # Other CertificateChoices (attribute certificates, tagged [1]..[3]) are not certificates.
    return [data[s:e] for tag, s, _, e in certs if tag == _SEQUENCE]


def is_der_set_order(elements: list[bytes]) -> bool:
    """Whether SET OF elements are in DER order (X.690 11.6: ascending, shorter padded with zeros)."""
    width = max((len(e) for e in elements), default=0)
    padded = [e.ljust(width, b"\x00") for e in elements]
    return padded == sorted(padded)
