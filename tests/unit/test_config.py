"""Configuration: one file, environment overrides, one-line errors."""

from pathlib import Path

import pytest

from certlc.config import is_loopback_url, load_settings
from certlc.errors import ConfigError

GOOD = """
state_dir = "state"
[[vaults]]
name = "demo"
url = "https://localhost:8443"
ca_profile = "dev"
[ca_profiles.dev]
kind = "devca"
[renewal]
concurrency = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "certlc.toml"
    path.write_text(text)
    return path


def test_file_values_and_relative_paths_anchor_at_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.renewal.concurrency == 3
    assert settings.state_dir == (tmp_path / "state").resolve()
    assert settings.vault("demo").url == "https://localhost:8443"


def test_environment_beats_the_file_and_code_beats_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTLC_RENEWAL__CONCURRENCY", "7")
    assert load_settings(write(tmp_path, GOOD)).renewal.concurrency == 7
    assert load_settings(write(tmp_path, GOOD), renewal={"concurrency": 9}).renewal.concurrency == 9


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("[[vaults]]\nname='x'\nurl='http://v'\n", "must be an https:// URL", id="plain http vault"),
        pytest.param("[renewal]\nconcurrency = 'many'\n", "renewal.concurrency", id="wrong type"),
        pytest.param("[renewal\n", "not valid TOML", id="broken toml"),
        pytest.param("bogus = 1\n", "bogus", id="unknown key"),
        pytest.param("[[vaults]]\nname='x'\nurl='https://v'\nca_profile='nope'\n", "CA profile 'nope'",
                     id="undefined CA profile"),
        pytest.param("[[vaults]]\nname='x'\nurl='https://v'\n", "uses CA profile 'default', which is not defined",
                     id="no CA profile at all is not a silent dev CA"),
        pytest.param("[[vaults]]\nname='x'\nurl='https://v'\nca_profile='adcs'\n[ca_profiles.adcs]\n"
                     "endpoint='https://ca01/certsrv'\n", "ca_profiles.adcs.kind: Field required",
                     id="a profile without its kind"),
        pytest.param("[[vaults]]\nname='x'\nurl='https://kv.vault.azure.net'\nca_profile='d'\n[ca_profiles.d]\n"
                     "kind='devca'\n", "the local development CA", id="the dev CA for a real vault"),
        pytest.param("[renewal]\nconcurrency = 0\nrenew_before_days = -1\n",
                     "renew_before_days: Input should be greater than 0; renewal.concurrency: Input should be",
                     id="every problem is named, not just the first"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_vault_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"vault 'other' is not in the configuration \(configured vaults: demo\)"):
        load_settings(write(tmp_path, GOOD)).vault("other")


@pytest.mark.parametrize(("url", "loopback"), [("https://localhost:8443", True), ("https://127.0.0.1", True),
                                               ("https://[::1]:1", True), ("https://v.vault.azure.net", False)])
def test_loopback_detection(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback
