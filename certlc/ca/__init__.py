"""CA connectors behind one contract (see certlc.ca.base)."""

from certlc.ca.base import CAConnector, Disposition, DispositionStatus, Health, SigningRequest
from certlc.ca.registry import connector_for, known_kinds

__all__ = [
    "CAConnector",
    "Disposition",
    "DispositionStatus",
    "Health",
    "SigningRequest",
    "connector_for",
    "known_kinds",
]
