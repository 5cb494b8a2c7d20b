"""Fixtures of the x509 tests: one throwaway PKI per session."""

from __future__ import annotations

import pytest
from x509_pki import Issued, Pki


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="session")
def chain3(pki: Pki) -> list[Issued]:
    """leaf, intermediate, root."""
    return pki.chain(3)
