"""When a certificate is due (DESIGN §5)."""

import datetime as dt

import pytest

from certlc.config import RenewalSettings
from certlc.policy import is_due, renew_before

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
S = RenewalSettings()


def cert(lifetime_days: float, remaining_days: float) -> tuple[dt.datetime, dt.datetime]:
    not_after = NOW + dt.timedelta(days=remaining_days)
    return not_after - dt.timedelta(days=lifetime_days), not_after


@pytest.mark.parametrize(
    ("lifetime", "remaining", "due", "reason"),
    [
        pytest.param(365, 100, False, "NotDue", id="a year-long certificate with 100 days left is not due"),
        pytest.param(365, 29, True, "InRenewalWindow", id="a year-long certificate with 29 days left is due"),
        pytest.param(90, 31, False, "NotDue", id="a 90-day certificate is not due with 31 days left"),
        pytest.param(90, 29.9, True, "InRenewalWindow", id="a 90-day certificate is due under 30 days"),
        pytest.param(30, 11, False, "NotDue", id="a 30-day certificate uses a third of its life, not 30 days"),
        pytest.param(30, 9, True, "InRenewalWindow", id="a 30-day certificate is due under 10 days"),
        pytest.param(90, -1, True, "Expired", id="an expired certificate is due"),
    ],
)
def test_due(lifetime: float, remaining: float, due: bool, reason: str) -> None:
    nb, na = cert(lifetime, remaining)
    result = is_due(nb, na, S, now=NOW)
    assert (result.due, result.reason) == (due, reason)


def test_a_freshly_renewed_certificate_is_never_due_even_with_a_huge_tag() -> None:
    nb, na = cert(90, 90)
    assert not is_due(nb, na, S, now=NOW, tags={"RenewBeforeDays": "500"}).due
    nb, na = cert(90, 44)
    assert is_due(nb, na, S, now=NOW, tags={"renewbeforedays": "500"}).due  # clamped to half the life


def test_tag_overrides_the_default_window_and_an_unreadable_tag_is_ignored() -> None:
    nb, na = cert(365, 50)
    assert is_due(nb, na, S, now=NOW, tags={"RenewBeforeDays": "60"}).due
    for junk in ("sixty", "inf", "-inf", "nan", "-5", "0", ""):
        assert not is_due(nb, na, S, now=NOW, tags={"RenewBeforeDays": junk}).due, junk


def test_an_absurdly_large_tag_is_clamped_not_a_crash() -> None:
    nb, na = cert(365, 150)
    assert is_due(nb, na, S, now=NOW, tags={"RenewBeforeDays": "1e300"}).due  # half the life
    nb, na = cert(365, 200)
    assert not is_due(nb, na, S, now=NOW, tags={"RenewBeforeDays": "1e300"}).due


def test_disabled_certificates_are_not_renewed() -> None:
    nb, na = cert(365, 1)
    assert is_due(nb, na, S, now=NOW, enabled=False).reason == "Disabled"


def test_window_is_the_smaller_of_days_and_fraction() -> None:
    assert renew_before(dt.timedelta(days=365), S) == dt.timedelta(days=30)
    assert renew_before(dt.timedelta(days=30), S) == dt.timedelta(days=10)
