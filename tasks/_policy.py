"""Retry, caching and settings policy shared by every step.

One retry layer: Prefect retries a task only when it failed with a TransientError (throttling,
5xx, network), with exponential backoff and jitter. Terminal errors and bad input fail at once.
Results are JSON (never pickles) and hold only ids, thumbprints, CSRs and public certificates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import DEFAULT
from prefect.tasks import exponential_backoff

from certlc.config import Settings, load_settings
from certlc.errors import TransientError

__all__ = ["PERSIST", "RETRY", "WITHIN_RUN", "current_settings", "retry_transient", "step_key", "stored"]

P = ParamSpec("P")
R = TypeVar("R")


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


RETRY: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}

PERSIST: dict[str, Any] = {"persist_result": True, "result_serializer": "json"}

# Reused only inside one flow run (inputs + task source + run id): a retry of that run — the
# Prefect UI's Retry — skips the read-only and Key Vault-side steps it already did, while a new
# run (the next event, the next sweep) reads the vault afresh.
WITHIN_RUN = DEFAULT


def stored(step: Task[P, R]) -> Task[P, R]:
    """``step`` writing its results under certlc's ``results_dir``: the directory every worker of
    a pool must share, since the cached CA submission there is what stops a second submission."""
    return step.with_options(result_storage=current_settings().results_path)


@functools.cache
def current_settings() -> Settings:
    """The configuration of this process ($CERTLC_CONFIG and CERTLC_* variables)."""
    return load_settings()


def step_key(step: str, *fields: str) -> Callable[[Any, dict[str, Any]], str]:
    """A cache key of vault / certificate / version / ``step`` / the listed request fields."""

    def key(context: Any, parameters: dict[str, Any]) -> str:
        snapshot = parameters["snapshot"]
        parts = [snapshot["vault"], snapshot["name"], snapshot["version"], step]
        for name in fields:
            obj, _, attr = name.partition(".")
            parts.append(str(parameters[obj][attr]) if attr else str(parameters[obj]))
        return "certlc-" + "-".join(p.replace("/", "_") for p in parts)

    return key
