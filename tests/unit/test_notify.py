"""The Recipient tag and the messages owners get."""

from certlc.notify import parse_recipients, render
from certlc.renewal import Outcome


def test_recipients_split_on_commas_and_semicolons_without_duplicates() -> None:
    valid, invalid = parse_recipients(" a@contoso.com; b@contoso.com ,A@contoso.com;; not-an-address , c@x")
    assert valid == ["a@contoso.com", "b@contoso.com"]
    assert invalid == ["not-an-address", "c@x"]


def test_empty_tag_means_nobody() -> None:
    assert parse_recipients(None) == ([], [])


def test_renewed_message_names_old_and_new_expiry_and_thumbprint() -> None:
    o = Outcome(vault="v", name="web", outcome="Renewed", reason="Issued", old_not_after="2026-01-01T00:00:00Z",
                new_not_after="2027-01-01T00:00:00Z", old_thumbprint="AA", new_thumbprint="BB", template="WebServer")
    message = render(o)
    assert "renewed" in message.subject
    assert "2027-01-01T00:00:00Z" in message.body and "BB" in message.body and "WebServer" in message.body
