"""AD CS certificate template extensions: read and write them exactly as AD CS does.

* v1 ``1.3.6.1.4.1.311.20.2`` (szOID_ENROLL_CERTTYPE): in practice a bare DER BMPString holding
  the template's common name. MS-WCCE describes ``SEQUENCE { UTF8String }``; both are accepted.
* v2+ ``1.3.6.1.4.1.311.21.7`` (szOID_CERTIFICATE_TEMPLATE):
  ``SEQUENCE { templateID OID, templateMajorVersion INTEGER OPTIONAL, templateMinorVersion INTEGER OPTIONAL }``.
  An absent version is ``None``, never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cryptography import x509
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, univ

from certlc.errors import InvalidInput

__all__ = [
    "TEMPLATE_NAME_OID",
    "TEMPLATE_V2_OID",
    "TemplateInfo",
    "decode_template_name",
    "decode_template_v2",
    "encode_template_name",
    "encode_template_v2",
    "template_of",
]

TEMPLATE_NAME_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2")
TEMPLATE_V2_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.21.7")


@dataclass(frozen=True)
class TemplateInfo:
    """A template as a certificate names it: a v1 name, and/or a v2 OID with versions."""

    name: str | None = None
    oid: str | None = None
    major: int | None = None
    minor: int | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        return asdict(self)

    @property
    def identifier(self) -> str:
        """What a CA request names: the v1 name, else the v2 OID."""
        return self.name or self.oid or ""


def encode_template_name(name: str) -> bytes:
    """DER BMPString of ``name``: the value AD CS writes into extension 20.2."""
    return encoder.encode(char.BMPString(name))


def decode_template_name(der: bytes) -> str:
    """The v1 template name from extension 20.2 (BMPString, or MS-WCCE's SEQUENCE{UTF8String})."""
    try:
        value, _rest = decoder.decode(der)
    except PyAsn1Error as exc:
        raise InvalidInput(f"template name extension is not valid DER: {exc}", reason="TemplateUnreadable") from None
    if isinstance(value, univ.Sequence) and len(value) >= 1:
        value = value[0]
    if isinstance(value, char.AbstractCharacterString):
        return str(value)
    raise InvalidInput("template name extension holds neither a BMPString nor a UTF8String",
                       reason="TemplateUnreadable")


def encode_template_v2(oid: str, major: int | None = None, minor: int | None = None) -> bytes:
    """DER of the v2 template extension 21.7. A minor version needs a major one."""
    if minor is not None and major is None:
        raise InvalidInput("a template minor version needs a major version", reason="TemplateInvalid")
    # Both versions are OPTIONAL INTEGERs with the same tag, so the schema is positional: build
    # the SEQUENCE without a spec (pyasn1 refuses a schema with two optional same-tag fields).
    seq = univ.SequenceOf(componentType=univ.Any())
    parts = [encoder.encode(univ.ObjectIdentifier(oid))]
    parts += [encoder.encode(univ.Integer(v)) for v in (major, minor) if v is not None]
    for i, part in enumerate(parts):
        seq[i] = univ.Any(part)
    return encoder.encode(seq)


def decode_template_v2(der: bytes) -> TemplateInfo:
    """OID and versions from extension 21.7; absent versions are None."""
    try:
        value, _ = decoder.decode(der)
    except PyAsn1Error as exc:
        raise InvalidInput(f"template information extension is not valid DER: {exc}",
                           reason="TemplateUnreadable") from None
    items = list(value.values()) if isinstance(value, univ.SequenceAndSetBase) else []
    if not items or not isinstance(items[0], univ.ObjectIdentifier) or len(items) > 3 \
            or not all(isinstance(i, univ.Integer) for i in items[1:]):
        raise InvalidInput("template information extension is not SEQUENCE { OID, INTEGER?, INTEGER? }",
                           reason="TemplateUnreadable")
    versions = [int(i) for i in items[1:]] + [None, None]
    return TemplateInfo(oid=str(items[0]), major=versions[0], minor=versions[1])


def template_of(cert: x509.Certificate) -> TemplateInfo | None:
    """The template a certificate was issued from, or None when it carries no template extension."""
    name: str | None = None
    v2: TemplateInfo | None = None
    for ext in cert.extensions:
        if ext.oid == TEMPLATE_NAME_OID:
            name = decode_template_name(ext.value.public_bytes())
        elif ext.oid == TEMPLATE_V2_OID:
            v2 = decode_template_v2(ext.value.public_bytes())
    if name is None and v2 is None:
        return None
    if v2 is None:
        return TemplateInfo(name=name)
    return TemplateInfo(name=name, oid=v2.oid, major=v2.major, minor=v2.minor)
