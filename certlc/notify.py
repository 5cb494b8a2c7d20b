"""Who to tell and what to say (DESIGN §4 step 6).

Recipients come from the certificate's ``Recipient`` tag: addresses separated by commas or
semicolons, spaces ignored, duplicates dropped, invalid ones reported but not fatal. In this
release messages are written to the run log; SMTP and Apprise delivery come later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certlc.renewal import Outcome

__all__ = ["Message", "parse_recipients", "render"]

# Deliberately simple: local@domain with a dot in the domain. Full RFC 5322 is not the point here;
# catching typos ("ops@contoso", "ops contoso.com") is.
_ADDRESS = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")


def parse_recipients(value: str | None) -> tuple[list[str], list[str]]:
    """(valid, invalid) addresses from a Recipient tag value, in order, without duplicates."""
    valid: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[;,]", value or ""):
        address = part.strip()
        if not address or address.lower() in seen:
            continue
        seen.add(address.lower())
        (valid if _ADDRESS.match(address) else invalid).append(address)
    return valid, invalid


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


def render(outcome: Outcome) -> Message:
    """A plain-text message for ``outcome``; never contains key material."""
    where = f"{outcome.name} in vault {outcome.vault}"
    if outcome.outcome in ("Renewed", "AlreadyRenewed"):
        return Message(
            subject=f"Certificate {outcome.name} renewed",
            body=(f"Certificate {where} was renewed.\n"
                  f"Old expiry: {outcome.old_not_after}  thumbprint {outcome.old_thumbprint}\n"
                  f"New expiry: {outcome.new_not_after}  thumbprint {outcome.new_thumbprint}\n"
                  f"Template: {outcome.template}\n"),
        )
    if outcome.outcome == "Pending":
        return Message(
            subject=f"Certificate {outcome.name} waits for CA approval",
            body=(f"The renewal request for {where} is held by the CA for a CA manager's approval "
                  f"(CA request {outcome.ca_request_id}). certlc will fetch it once approved.\n"),
        )
    if outcome.outcome == "Denied":
        return Message(
            subject=f"Certificate {outcome.name}: renewal denied by the CA",
            body=f"The CA denied the renewal of {where}: {outcome.message}\n",
        )
    return Message(
        subject=f"Certificate {outcome.name}: renewal failed",
        body=f"The renewal of {where} failed ({outcome.reason}): {outcome.message}\n",
    )
