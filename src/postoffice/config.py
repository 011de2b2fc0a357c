"""The broker's settings and where they come from.

Each setting has one name, used everywhere: the :class:`Settings` field ``data_dir``
is the flag ``--data-dir``, the environment variable ``POSTOFFICE_DATA_DIR`` and the
key ``data_dir`` at the top level of the TOML config file.  :func:`load_settings`
merges the sources, first found wins::

    command-line flag > environment variable > TOML file > default

The TOML file is named by ``--config`` or ``POSTOFFICE_CONFIG``; its keys sit at the
top level (no ``[postoffice]`` table), and an unknown key is an error, so that a typo
does not silently leave a default in place.

Every value goes through one rule, whatever its source: a string is parsed into the
field's type (``"5672"`` -> 5672; a list is comma-separated), any other value must
already have that type.  A bad value raises :class:`ConfigError` naming the setting and
its source.  :class:`Settings` applies the same rule when built directly, so a
``Settings`` object always holds valid, normalised values.

This module imports nothing from the rest of postoffice: every layer may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "ConfigError",
    "Settings",
    "env_var",
    "flag",
    "load_settings",
]

ENV_PREFIX = "POSTOFFICE_"
CONFIG_ENV_VAR = "POSTOFFICE_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")

# RabbitMQ refuses a max_message_size above 512 MiB; so do we.
_MAX_MESSAGE_SIZE_LIMIT = 512 * 1024 * 1024
# The spec's smallest frame_max (AMQP 0-9-1 section 4.2.1, "frame-min-size").
_FRAME_MIN_SIZE = 4096


class ConfigError(ValueError):
    """A setting has a bad value, or a config file cannot be used.

    ``setting`` is the field name (``None`` for a problem with the file as a whole)
    and ``source`` says where the value came from, e.g. ``"environment variable
    POSTOFFICE_PORT"``; both are in the message too.
    """

    def __init__(self, message: str, *, setting: str | None = None, source: str = "") -> None:
        super().__init__(message)
        self.setting = setting
        self.source = source


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the broker is told at start-up; valid and normalised once built."""

    host: str = field(
        default="",
        metadata=_help("address to listen on; empty means all interfaces, IPv4 and IPv6"),
    )
    port: int = field(default=5672, metadata=_help("TCP port for AMQP; 0 picks a free port"))
    unix_socket: str | None = field(
        default=None, metadata=_help("also listen on this Unix socket path; empty means none")
    )
    data_dir: str = field(
        default="./postoffice-data", metadata=_help("directory for the broker's data")
    )
    log_level: str = field(default="info", metadata=_help("one of " + ", ".join(LOG_LEVELS)))
    heartbeat: int = field(
        default=60,
        metadata=_help("heartbeat interval in seconds proposed to clients; 0 disables"),
    )
    frame_max: int = field(
        default=131072, metadata=_help(f"largest frame in bytes, at least {_FRAME_MIN_SIZE}")
    )
    channel_max: int = field(
        default=2047, metadata=_help("most channels per connection, 1 to 65535")
    )
    handshake_timeout: float = field(
        default=10.0, metadata=_help("seconds a client has to finish the AMQP handshake")
    )
    max_message_size: int = field(
        default=134217728,
        metadata=_help(f"largest message body in bytes, at most {_MAX_MESSAGE_SIZE_LIMIT}"),
    )
    consumer_timeout: int = field(
        default=1_800_000,
        metadata=_help(
            "milliseconds a delivery may stay unacknowledged before its channel is closed "
            "with 406, as RabbitMQ's consumer_timeout; 0 disables"
        ),
    )
    memory_high_watermark: float = field(
        default=0.4,
        metadata=_help(
            "fraction of RAM above which publishers are blocked (connection.blocked), "
            "as RabbitMQ's vm_memory_high_watermark; 1 disables"
        ),
    )
    disk_free_limit: int = field(
        default=50_000_000,
        metadata=_help(
            "free bytes under the data dir below which publishers are blocked, "
            "as RabbitMQ's disk_free_limit; 0 disables"
        ),
    )
    default_user: str = field(default="guest", metadata=_help("name of the built-in user"))
    default_pass: str = field(
        default="guest", repr=False, metadata=_help("password of the built-in user")
    )
    default_vhost: str = field(default="/", metadata=_help("name of the built-in virtual host"))
    loopback_users: tuple[str, ...] = field(
        default=("guest",),
        metadata=_help(
            "users who may connect only from localhost; comma-separated, empty for none"
        ),
    )

    def __post_init__(self) -> None:
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            normalised = _coerce(name, value, "Settings()")
            if normalised is not value:
                # Frozen: the one sanctioned way to normalise in __post_init__.
                object.__setattr__(self, name, normalised)


def env_var(name: str) -> str:
    """The environment variable of a setting: ``data_dir`` -> ``POSTOFFICE_DATA_DIR``."""
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    """The command-line flag of a setting: ``data_dir`` -> ``--data-dir``."""
    return "--" + name.replace("_", "-")


def load_settings(
    cli: Mapping[str, Any], env: Mapping[str, str], config_file: str | None
) -> Settings:
    """Merge flags, environment and TOML file into :class:`Settings`.

    ``cli`` maps field names to values, ``None`` meaning "flag not given".  ``env``
    is usually ``os.environ``; only ``POSTOFFICE_*`` variables are read, and an
    unrecognised one is ignored.  ``config_file`` (from ``--config``) falls back to
    ``$POSTOFFICE_CONFIG``; no file is read when both are unset or empty.
    """
    # Every value given is checked, even one a higher source overrides: a mistake in
    # the file should not wait for the day the flag that hides it is dropped.
    from_cli: dict[str, Any] = {}
    for name, value in cli.items():
        if name not in _FIELD_NAMES:
            raise ConfigError(f"unknown setting {name!r} on the command line", setting=name)
        if value is not None:
            from_cli[name] = _coerce(name, value, f"command line ({flag(name)})")

    from_env = {
        name: _coerce(name, env[env_var(name)], f"environment variable {env_var(name)}")
        for name in _FIELD_NAMES
        if env_var(name) in env
    }

    from_file: dict[str, Any] = {}
    if config_file is None:
        config_file, origin = env.get(CONFIG_ENV_VAR), f"environment variable {CONFIG_ENV_VAR}"
    else:
        origin = "--config"
    if config_file:
        from_file = {
            name: _coerce(name, value, f"config file {config_file} (key {name!r})")
            for name, value in _read_toml(config_file, origin).items()
        }

    return Settings(**(from_file | from_env | from_cli))


def _read_toml(path: str, origin: str) -> dict[str, Any]:
    where = f"config file {path} (from {origin})"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in _FIELD_NAMES:
            raise ConfigError(f"{where}: unknown setting {key!r}{_unknown_hint(key, value)}")
    return data


def _unknown_hint(key: str, value: object) -> str:
    if isinstance(value, dict):
        return "; settings go at the top level of the file, not in a [table]"
    close = difflib.get_close_matches(key, _FIELD_NAMES, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return "; known settings: " + ", ".join(_FIELD_NAMES)


# --- conversion: one rule per field type --------------------------------------------


class _Invalid(Exception):
    """Raised by a converter or check; the reason is completed into a ConfigError."""


def _coerce(name: str, value: object, source: str) -> Any:
    try:
        converted = _CONVERTERS[_TYPES[name]](value)
        check = _CHECKS.get(name)
        return check(converted) if check is not None else converted
    except _Invalid as exc:
        shown = "(hidden)" if name in _SECRETS else repr(value)
        raise ConfigError(
            f"invalid {name} {shown} from {source}: {exc}", setting=name, source=source
        ) from None


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_type_name(value)}")
    return value


def _to_optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return _to_str(value)


def _to_int(value: object) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise _Invalid("expected an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_type_name(value)}")
    return value


def _to_float(value: object) -> float:
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid("expected a number") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_type_name(value)}")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise _Invalid("expected a finite number")
    return number


def _to_str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, list | tuple):
        raise _Invalid(f"expected a list of strings, got {_type_name(value)}")
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"expected a list of strings, but it holds {_type_name(item)}")
    return tuple(value)


def _type_name(value: object) -> str:
    # Only the type: _coerce shows the value, unless it is a secret.
    return "a table" if isinstance(value, dict) else type(value).__name__


_CONVERTERS: dict[object, Callable[[object], Any]] = {
    str: _to_str,
    str | None: _to_optional_str,
    int: _to_int,
    float: _to_float,
    tuple[str, ...]: _to_str_tuple,
}


# --- checks: the range of each field --------------------------------------------------


def _between(low: float, high: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}")
        return value

    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise _Invalid("must be greater than 0")
    return value


def _not_empty(value: str) -> str:
    if not value:
        raise _Invalid("must not be empty")
    return value


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise _Invalid("must be one of " + ", ".join(LOG_LEVELS))
    return level


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "port": _between(0, 65535),
    "data_dir": _not_empty,
    "log_level": _log_level,
    "heartbeat": _between(0, 65535),  # a short in connection.tune
    "frame_max": _between(_FRAME_MIN_SIZE, 2**32 - 1),  # a long in connection.tune
    "channel_max": _between(1, 65535),
    "handshake_timeout": _positive,
    "max_message_size": _between(1, _MAX_MESSAGE_SIZE_LIMIT),
    "consumer_timeout": _between(0, 2**63 - 1),
    "memory_high_watermark": _between(0.01, 1.0),
    "disk_free_limit": _between(0, 2**63 - 1),
    "default_user": _not_empty,
    "default_vhost": _not_empty,
}

_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
_TYPES: dict[str, object] = typing.get_type_hints(Settings)
_SECRETS = frozenset(f.name for f in dataclasses.fields(Settings) if not f.repr)
