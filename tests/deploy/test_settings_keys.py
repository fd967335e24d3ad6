"""VIDEOTAG_API_KEYS as a JSON list or comma-separated, from the environment or an .env file (compose passes
whatever the user wrote in its .env: `k1,k2` used to abort the whole stack with a settings parse error)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from videotag.core.settings import Settings
from workers.supervisor import settings_env


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ("k1,k2", ["k1", "k2"]),
        ('["k1","k2"]', ["k1", "k2"]),
        (' [ "k1" , "k2" ] ', ["k1", "k2"]),
        (" k1 , , k2 ,", ["k1", "k2"]),  # blanks around and between are not keys
        ("single-key", ["single-key"]),
        ("12345", ["12345"]),  # valid JSON, but a key: kept as text
        ("1e5", ["1e5"]),
        ("", []),  # set but empty: no authentication, as unset
        ("[]", []),
        ('["with,comma"]', ["with,comma"]),  # the JSON form allows commas inside a key
    ],
)
def test_api_keys_from_environment(monkeypatch, value, keys):
    monkeypatch.setenv("VIDEOTAG_API_KEYS", value)
    assert Settings(_env_file=None).api_keys == keys


def test_api_keys_from_env_file(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEOTAG_API_KEYS", raising=False)
    env = tmp_path / ".env"
    env.write_text("VIDEOTAG_API_KEYS=k1,k2\nVIDEOTAG_TOPK=5\n", encoding="utf-8")
    s = Settings(_env_file=env)
    assert s.api_keys == ["k1", "k2"] and s.topk == 5
    env.write_text('VIDEOTAG_API_KEYS=["k1", "k2"]\n', encoding="utf-8")
    assert Settings(_env_file=env).api_keys == ["k1", "k2"]


def test_api_keys_unset_and_in_code(monkeypatch):
    monkeypatch.delenv("VIDEOTAG_API_KEYS", raising=False)
    assert Settings(_env_file=None).api_keys == []
    assert Settings(_env_file=None, api_keys=["a", " b "]).api_keys == ["a", "b"]
    assert Settings(_env_file=None, api_keys="a,b").api_keys == ["a", "b"]


def test_broken_json_list_is_an_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("VIDEOTAG_API_KEYS", '["k1", "k2"')
    with pytest.raises(ValidationError, match="comma-separated"):
        Settings(_env_file=None)


def test_keys_round_trip_to_child_processes(monkeypatch):
    """`videotag serve` hands its settings to its children as VIDEOTAG_* variables: keys survive that."""
    s = Settings(_env_file=None, api_keys=["k,1", "k2"])
    monkeypatch.setenv("VIDEOTAG_API_KEYS", settings_env(s)["VIDEOTAG_API_KEYS"])
    assert Settings(_env_file=None).api_keys == ["k,1", "k2"]
