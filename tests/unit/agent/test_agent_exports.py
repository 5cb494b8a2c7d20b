"""The agent's modules list their public names in __all__ (as tests/unit/test_public_api.py does for certlc)."""

import importlib

import pytest


@pytest.mark.parametrize("module", ["certlc.agent.settings", "certlc.agent.material", "certlc.agent.install",
                                    "certlc.agent.poll", "certlc.agent.deploy", "certlc.agent.winstore",
                                    "certlc.agent.report"])
def test_all_lists_the_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", module) == module
              and not isinstance(v, type(importlib))}
    assert public <= set(mod.__all__) | {"annotations"}
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_the_agent_imports_no_prefect() -> None:
    import subprocess
    import sys

    code = ("import sys, certlc.agent.settings, certlc.agent.material, certlc.agent.install, certlc.agent.poll, "
            "certlc.agent.deploy, certlc.agent.winstore, certlc.agent.report; print('prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
