"""`certlc ca check`: a usable profile, an unreachable CA, and bad configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from certlc.stack import free_port


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTLC_")}
    env["CFSSL_TEST_KEY"] = "00112233445566778899aabbccddeeff"
    return subprocess.run([sys.executable, "-m", "certlc.cli", "ca", "check", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def write(tmp_path: Path, cfssl_port: int) -> Path:
    path = tmp_path / "certlc.toml"
    path.write_text(f"""
state_dir = "{tmp_path}"
[ca_profiles.dev]
kind = "devca"
[ca_profiles.signer]
kind = "cfssl"
endpoint = "http://127.0.0.1:{cfssl_port}"
options = {{ auth_key_env = "CFSSL_TEST_KEY", timeout_seconds = 2 }}
[ca_profiles.broken]
kind = "acme-someday"
""")
    return path


def test_a_usable_profile_passes(tmp_path: Path) -> None:
    proc = run(write(tmp_path, free_port()), "dev")
    assert proc.returncode == 0, proc.stderr
    assert "dev (devca): OK" in proc.stdout


def test_an_unreachable_ca_is_a_problem_in_plain_words(tmp_path: Path) -> None:
    proc = run(write(tmp_path, free_port()), "signer", "--json")
    assert proc.returncode == 1, proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["ok"] is False and result["problems"]
    assert "Traceback" not in proc.stderr
    assert "00112233445566778899aabbccddeeff" not in proc.stdout + proc.stderr


def test_unknown_profile_or_kind_is_a_configuration_error(tmp_path: Path) -> None:
    config = write(tmp_path, free_port())
    for name in ("nope", "broken"):
        proc = run(config, name)
        assert proc.returncode == 2
        assert proc.stderr.startswith("certlc: error:") and proc.stderr.count("\n") == 1
