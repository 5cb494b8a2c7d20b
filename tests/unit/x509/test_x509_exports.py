"""certlc.x509's public surface is exactly its __all__."""

from __future__ import annotations

import inspect

import certlc.x509


def test_all_lists_every_public_name() -> None:
    public = {name for name, value in vars(certlc.x509).items()
              if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"}
    assert set(certlc.x509.__all__) == public


def test_lead_api_is_exported() -> None:
    for name in ["load_any", "load_certificates", "load_csr", "describe", "san_strings", "dns_a_label",
                 "key_info", "sha1_thumbprint", "order_chain", "same_public_key", "find_by_public_key",
                 "Loaded", "template_of", "TemplateInfo"]:
        assert name in certlc.x509.__all__
