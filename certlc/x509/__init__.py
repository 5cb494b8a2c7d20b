"""Certificates as certlc meets them: tolerant loading, description, names, keys, chain order,
and AD CS template extensions.

* :mod:`.load`: :func:`load_any` and friends read PEM/DER/PKCS#7/PFX/CSR in any field form;
* :mod:`.describe`: :func:`describe`, the ``certlc inspect --json`` object of a certificate or CSR;
* :mod:`.names`: SAN strings and DNS A-labels;
* :mod:`.keys`: key type/size and public-key identity;
* :mod:`.chain`: leaf-first chain order;
* :mod:`.templates`: the AD CS template extensions.
"""

from __future__ import annotations

from certlc.x509.chain import is_issued_by, order_chain
from certlc.x509.describe import describe, eku_oids, is_ca, sha1_thumbprint
from certlc.x509.keys import find_by_public_key, key_info, public_key_der, same_public_key
from certlc.x509.load import Loaded, load_any, load_certificates, load_csr
from certlc.x509.names import UPN_OID, dns_a_label, san_strings, subject_alternative_names, unique_a_labels
from certlc.x509.templates import (
    TEMPLATE_NAME_OID,
    TEMPLATE_V2_OID,
    TemplateInfo,
    decode_template_name,
    decode_template_v2,
    encode_template_name,
    encode_template_v2,
    template_of,
)

__all__ = [
    "TEMPLATE_NAME_OID",
    "TEMPLATE_V2_OID",
    "UPN_OID",
    "Loaded",
    "TemplateInfo",
    "decode_template_name",
    "decode_template_v2",
    "describe",
    "dns_a_label",
    "eku_oids",
    "encode_template_name",
    "encode_template_v2",
    "find_by_public_key",
    "is_ca",
    "is_issued_by",
    "key_info",
    "load_any",
    "load_certificates",
    "load_csr",
    "order_chain",
    "public_key_der",
    "same_public_key",
    "san_strings",
    "sha1_thumbprint",
    "subject_alternative_names",
    "template_of",
    "unique_a_labels",
]
