"""Settings: where each value comes from, how it is converted, how a bad one is reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from postoffice.config import ConfigError, Settings, env_var, flag, load_settings


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- defaults and names -----------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings({}, {}, None)
    assert settings == Settings()
    assert settings.host == ""
    assert settings.port == 5672
    assert settings.unix_socket is None
    assert settings.data_dir == "./postoffice-data"
    assert settings.log_level == "info"
    assert settings.heartbeat == 60
    assert settings.frame_max == 131072
    assert settings.channel_max == 2047
    assert settings.handshake_timeout == 10.0
    assert settings.max_message_size == 134217728
    assert (settings.default_user, settings.default_pass) == ("guest", "guest")
    assert settings.default_vhost == "/"
    assert settings.loopback_users == ("guest",)


def test_names_of_a_setting() -> None:
    assert env_var("data_dir") == "POSTOFFICE_DATA_DIR"
    assert flag("data_dir") == "--data-dir"


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_password_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(Settings(default_pass="s3cret"))


def test_password_stays_out_of_error_messages() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(default_pass=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value)
    assert "default_pass" in str(info.value)


# --- precedence -------------------------------------------------------------------------


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'port = 1001\nhost = "file-host"\ndata_dir = "file-dir"\n')
    env = {"POSTOFFICE_PORT": "1002", "POSTOFFICE_HOST": "env-host"}
    settings = load_settings({"port": "1003"}, env, config)
    assert settings.port == 1003  # flag over env and file
    assert settings.host == "env-host"  # env over file
    assert settings.data_dir == "file-dir"  # file over default
    assert settings.log_level == "info"  # default


def test_a_flag_left_out_is_none_and_does_not_override() -> None:
    settings = load_settings({"port": None, "host": None}, {"POSTOFFICE_PORT": "1002"}, None)
    assert settings.port == 1002
    assert settings.host == ""


def test_config_file_from_env(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "heartbeat = 5\n")
    assert load_settings({}, {"POSTOFFICE_CONFIG": config}, None).heartbeat == 5


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, "heartbeat = 5\n")
    ignored = tmp_path / "other.toml"
    ignored.write_text("heartbeat = 7\n", encoding="utf-8")
    env = {"POSTOFFICE_CONFIG": str(ignored)}
    assert load_settings({}, env, chosen).heartbeat == 5


def test_empty_config_path_reads_no_file() -> None:
    assert load_settings({}, {"POSTOFFICE_CONFIG": ""}, None) == Settings()
    assert load_settings({}, {"POSTOFFICE_CONFIG": "/nonexistent.toml"}, "") == Settings()


def test_other_environment_variables_are_ignored() -> None:
    env = {"POSTOFFICE_SOMETHING_ELSE": "x", "PORT": "1", "HOME": "/root"}
    assert load_settings({}, env, None) == Settings()


def test_a_bad_value_is_reported_even_when_overridden(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'port = "abc"\n')
    with pytest.raises(ConfigError, match="config file"):
        load_settings({"port": "1"}, {}, config)


# --- conversion -------------------------------------------------------------------------


def test_strings_are_converted_to_the_field_type() -> None:
    env = {
        "POSTOFFICE_PORT": " 5673 ",
        "POSTOFFICE_HEARTBEAT": "0",
        "POSTOFFICE_HANDSHAKE_TIMEOUT": "2.5",
        "POSTOFFICE_LOOPBACK_USERS": "guest, admin,,",
        "POSTOFFICE_UNIX_SOCKET": "/tmp/po.sock",
        "POSTOFFICE_LOG_LEVEL": "WARNING",
    }
    settings = load_settings({}, env, None)
    assert settings.port == 5673
    assert settings.heartbeat == 0
    assert settings.handshake_timeout == 2.5
    assert settings.loopback_users == ("guest", "admin")
    assert settings.unix_socket == "/tmp/po.sock"
    assert settings.log_level == "warning"


def test_empty_strings() -> None:
    env = {
        "POSTOFFICE_HOST": "",
        "POSTOFFICE_UNIX_SOCKET": "",
        "POSTOFFICE_LOOPBACK_USERS": "",
    }
    settings = load_settings({}, env, None)
    assert settings.host == ""
    assert settings.unix_socket is None
    assert settings.loopback_users == ()


def test_typed_values_pass_through() -> None:
    cli = {"port": 0, "handshake_timeout": 3, "loopback_users": ["a", "b"]}
    settings = load_settings(cli, {}, None)
    assert settings.port == 0
    assert settings.handshake_timeout == 3.0
    assert isinstance(settings.handshake_timeout, float)
    assert settings.loopback_users == ("a", "b")


def test_settings_built_directly_are_normalised_and_checked() -> None:
    settings = Settings(log_level="DEBUG", loopback_users=["x"])  # type: ignore[arg-type]
    assert settings.log_level == "debug"
    assert settings.loopback_users == ("x",)
    with pytest.raises(ConfigError, match=r"port .*Settings\(\)"):
        Settings(port=70000)


def test_replace_checks_too() -> None:
    with pytest.raises(ConfigError, match="frame_max"):
        dataclasses.replace(Settings(), frame_max=10)


# --- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("port", "abc", "expected an integer"),
        ("port", "-1", "between 0 and 65535"),
        ("port", "65536", "between 0 and 65535"),
        ("port", "5672.0", "expected an integer"),
        ("log_level", "verbose", "one of debug, info, warning, error"),
        ("frame_max", "4095", "between 4096 and"),
        ("channel_max", "0", "between 1 and 65535"),
        ("heartbeat", "-5", "between 0 and 65535"),
        ("handshake_timeout", "0", "greater than 0"),
        ("handshake_timeout", "soon", "expected a number"),
        ("handshake_timeout", "inf", "finite"),
        ("max_message_size", "0", "between 1 and"),
        ("max_message_size", str(2**30), "between 1 and 536870912"),
        ("data_dir", "", "must not be empty"),
        ("default_user", "", "must not be empty"),
        ("default_vhost", "", "must not be empty"),
    ],
)
def test_bad_env_value(name: str, value: str, reason: str) -> None:
    var = env_var(name)
    with pytest.raises(ConfigError) as info:
        load_settings({}, {var: value}, None)
    message = str(info.value)
    assert name in message
    assert f"environment variable {var}" in message
    assert reason in message
    assert info.value.setting == name


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"invalid port 'abc' from command line \(--port\)"):
        load_settings({"port": "abc"}, {}, None)


def test_bool_is_not_an_integer() -> None:
    with pytest.raises(ConfigError, match="expected an integer, got bool"):
        load_settings({"heartbeat": True}, {}, None)


def test_unknown_flag_key() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings({"prot": "1"}, {}, None)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- the TOML file ------------------------------------------------------------------------


def test_toml_values_of_every_type(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
host = "127.0.0.1"
port = 5999
unix_socket = "/run/po.sock"
log_level = "debug"
handshake_timeout = 4
loopback_users = ["guest", "ops"]
default_pass = "pw"
""",
    )
    settings = load_settings({}, {}, config)
    assert settings.host == "127.0.0.1"
    assert settings.port == 5999
    assert settings.unix_socket == "/run/po.sock"
    assert settings.log_level == "debug"
    assert settings.handshake_timeout == 4.0
    assert settings.loopback_users == ("guest", "ops")
    assert settings.default_pass == "pw"


def test_toml_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "prot = 5672\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, config)
    message = str(info.value)
    assert config in message
    assert "unknown setting 'prot'" in message
    assert "did you mean 'port'" in message


def test_toml_table_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[postoffice]\nport = 5672\n")
    with pytest.raises(ConfigError, match="top level"):
        load_settings({}, {}, config)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("port = true\n", "expected an integer, got bool"),
        ("port = 1.5\n", "expected an integer, got float"),
        ("host = 1\n", "expected a string, got int"),
        ("loopback_users = [1]\n", "expected a list of strings"),
        ("handshake_timeout = -1.0\n", "greater than 0"),
        ('log_level = "loud"\n', "one of debug"),
    ],
)
def test_toml_bad_value(tmp_path: Path, text: str, reason: str) -> None:
    config = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, config)
    key = text.split("=")[0].strip()
    assert f"config file {config} (key '{key}')" in str(info.value)
    assert reason in str(info.value)


def test_toml_string_for_a_list_is_comma_separated(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'loopback_users = "guest,ops"\n')
    assert load_settings({}, {}, config).loopback_users == ("guest", "ops")


def test_toml_syntax_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, {}, config)


def test_missing_config_file_names_where_its_path_came_from(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"no such file") as info:
        load_settings({}, {}, missing)
    assert "--config" in str(info.value)
    with pytest.raises(ConfigError, match="environment variable POSTOFFICE_CONFIG"):
        load_settings({}, {"POSTOFFICE_CONFIG": missing}, None)


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({}, {}, str(tmp_path))
