"""Settings defaults and environment parsing."""

from __future__ import annotations

import pytest

from server.settings import Settings


def test_production_defaults_for_accounts():
    s = Settings()
    assert s.bcrypt_rounds == 12
    assert (s.guest_session_days, s.login_session_days) == (7, 30)
    assert s.login_max_failures_per_ip > 0 and s.login_max_failures_per_account > 0
    assert s.login_failure_window_seconds >= 60


def test_from_env_parses_types():
    s = Settings.from_env({"BCRYPT_ROUNDS": "10", "REQUIRE_PAYMENT": "false",
                           "ALLOWED_ORIGINS": " https://a.example , https://b.example ,",
                           "DATABASE_URL": "postgresql://x@h/db"})
    assert s.bcrypt_rounds == 10
    assert s.require_payment is False
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.database_url == "postgresql://x@h/db"


def test_from_env_ignores_unset_and_applies_overrides():
    s = Settings.from_env({}, bcrypt_rounds=4)
    assert s.bcrypt_rounds == 4 and s.login_session_days == 30


def test_settings_are_frozen_and_with_copies():
    s = Settings()
    with pytest.raises(AttributeError):
        s.bcrypt_rounds = 4  # type: ignore[misc]
    t = s.with_(bcrypt_rounds=4)
    assert (s.bcrypt_rounds, t.bcrypt_rounds) == (12, 4)


def test_bad_integer_in_env_fails_loudly():
    with pytest.raises(ValueError):
        Settings.from_env({"BCRYPT_ROUNDS": "twelve"})
