"""Settings from flags, environment (with wasmiot aliases) and device profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

import supervisor
from supervisor.config import DEFAULT_PORT, ConfigError, load_profile, load_settings
from tests.conftest import ROOT


def test_import_supervisor_is_this_tree_not_supervisord() -> None:
    assert Path(supervisor.__file__).resolve().parent == ROOT / "supervisor"


def test_defaults() -> None:
    s = load_settings([], {"HOME": "/home/x"})
    assert s.port == DEFAULT_PORT and s.host == "0.0.0.0"
    assert s.mdns_enabled and s.mdns_interfaces is None and s.token is None
    assert s.state_dir == Path.home() / ".local" / "state" / "baton-supervisor"


def test_flags_beat_env_and_wasmiot_aliases_work(tmp_path: Path) -> None:
    env = {
        "WASMIOT_SUPERVISOR_NAME": "legacy",
        "WASMIOT_SUPERVISOR_PORT": "5001",
        "WASMIOT_ORCHESTRATOR_URL": "http://o:3000",
    }
    s = load_settings([], env)
    assert (s.name, s.port, s.orchestrator_url) == ("legacy", 5001, "http://o:3000")
    s = load_settings(["--port", "6000", "--name", "flag"], env | {"BATON_NAME": "env"})
    assert (s.name, s.port) == ("flag", 6000)
    assert load_settings([], env | {"BATON_NAME": "env"}).name == "env"


def test_mdns_interfaces() -> None:
    assert load_settings(["--mdns-interfaces", "none"], {}).mdns_enabled is False
    s = load_settings([], {"BATON_MDNS_INTERFACES": "127.0.0.1, 10.0.0.2"})
    assert s.mdns_interfaces == ("127.0.0.1", "10.0.0.2")
    assert load_settings(["--mdns-interfaces", "all"], {}).mdns_interfaces is None


def test_systemd_state_directory(tmp_path: Path) -> None:
    assert load_settings([], {"STATE_DIRECTORY": str(tmp_path)}).state_dir == tmp_path


def test_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  abc123\n")
    assert load_settings(["--token-file", str(token)], {}).token == "abc123"
    token.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_settings(["--token-file", str(token)], {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(["--token-file", str(tmp_path / "missing")], {})


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings([], {"BATON_PORT": "http"})
    with pytest.raises(ConfigError, match="out of range"):
        load_settings(["--port", "70000"], {})
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nunknown_key = 1\n')
    with pytest.raises(ConfigError, match="unknown_key"):
        load_profile(bad)


def test_profile_supplies_name_labels_and_drivers() -> None:
    s = load_settings(["--profile", str(ROOT / "devices" / "camera-node.toml")], {})
    assert s.name == "camera-node" and s.labels["role"] == "camera"
    assert s.profile.drivers["camera"]["kind"] == "simulated"
    assert s.profile_dir == ROOT / "devices"
