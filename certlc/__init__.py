"""certlc: automatic renewal of Azure Key Vault certificates from CAs Key Vault cannot renew itself."""

from certlc.errors import CertlcError, ConfigError, InvalidInput, NeedsApproval, TerminalError, TransientError

__all__ = [
    "CertlcError",
    "ConfigError",
    "InvalidInput",
    "NeedsApproval",
    "TerminalError",
    "TransientError",
    "__version__",
]

__version__ = "0.1.0"
