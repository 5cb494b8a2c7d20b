"""The public surface is explicit: __all__ lists exactly the public names."""

import importlib

import pytest


@pytest.mark.parametrize("module", ["certlc", "certlc.ca", "certlc.errors", "certlc.config", "certlc.vault",
                                    "certlc.policy", "certlc.renewal", "certlc.verify", "certlc.notify",
                                    "certlc.clients", "certlc.x509", "certlc.emulator", "certlc.rollout",
                                    "certlc.deliver", "certlc.notice_log", "certlc.history", "certlc.inventory", "certlc.metrics"])
def test_all_lists_the_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", module) == module
              and not isinstance(v, type(importlib))}
    assert public <= set(mod.__all__) | {"annotations"}
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_the_package_is_typed() -> None:
    import certlc

    assert importlib.resources.files(certlc).joinpath("py.typed").is_file()
