"""``baton-orchestrator`` settings from flags: the reconcile interval and execution deadline."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_settings


def test_reconcile_interval_and_execution_deadline_come_from_flags() -> None:
    default = load_settings([], {"HOME": "/home/x"})
    assert (default.reconcile_interval_s, default.execution_deadline_s) == (10.0, 60.0)
    tuned = load_settings(["--reconcile-interval", "0.5", "--execution-deadline", "20"], {})
    assert (tuned.reconcile_interval_s, tuned.execution_deadline_s) == (0.5, 20.0)


@pytest.mark.parametrize("flag", ["--reconcile-interval", "--execution-deadline"])
@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_a_duration_that_is_not_a_positive_number_is_refused(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        load_settings([flag, value], {})
