"""The ``postoffice`` command.

``postoffice serve`` reads :class:`~postoffice.config.Settings` from flags, environment
and config file, sets up logging, and hands over to :func:`postoffice.server.run`,
which blocks until SIGINT or SIGTERM.  Exit codes: 0 after a clean shutdown, 1 when the
server cannot run (for example the port is taken), 2 for a usage or config error,
130 when interrupted before the server took over the signals.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from postoffice import __version__
from postoffice.config import (
    CONFIG_ENV_VAR,
    ConfigError,
    Settings,
    env_var,
    flag,
    load_settings,
)

__all__ = ["main"]

log = logging.getLogger("postoffice.cli")

# A password on the command line is visible to every user through ps(1).
_NO_FLAG = frozenset({"default_pass"})

_METAVARS = {
    "unix_socket": "PATH",
    "data_dir": "DIR",
    "log_level": "LEVEL",
    "heartbeat": "SECONDS",
    "frame_max": "BYTES",
    "channel_max": "N",
    "handshake_timeout": "SECONDS",
    "max_message_size": "BYTES",
    "consumer_timeout": "MS",
    "memory_high_watermark": "FRACTION",
    "disk_free_limit": "BYTES",
    "default_user": "USER",
    "default_vhost": "VHOST",
    "loopback_users": "USERS",
}

_SERVE_EPILOG = f"""\
Every setting can also come from an environment variable or a TOML config file.
When a setting is given more than once, the first of these wins:

  1. the command-line flag            --data-dir /var/lib/postoffice
  2. the environment variable         {env_var("data_dir")}=/var/lib/postoffice
  3. the config file                  data_dir = "/var/lib/postoffice"
  4. the default

The config file is named by --config or {CONFIG_ENV_VAR}. It is TOML with the
settings as top-level keys, spelled like the Settings fields (data_dir, log_level,
...); an unknown key is an error. Lists are TOML arrays in the file and
comma-separated strings on the command line and in the environment:

  port = 5672
  data_dir = "/var/lib/postoffice"
  log_level = "info"
  loopback_users = ["guest"]

default_pass has no flag, so that it does not show up in ps(1): set
{env_var("default_pass")} or put it in the config file.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["bench"]:
        # Imported here: serving never needs the load generator, which parses its own flags.
        from postoffice.bench import main as bench

        return bench(arguments[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    if args.command == "serve":
        return _serve(args)
    parser.print_help(sys.stderr)
    return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postoffice", description="An AMQP 0-9-1 message broker.")
    parser.add_argument("--version", action="version", version=f"postoffice {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the broker until SIGINT or SIGTERM",
        description="Run the broker until SIGINT or SIGTERM, then shut down gracefully.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (env {CONFIG_ENV_VAR}; default: none)",
    )
    for spec in dataclasses.fields(Settings):
        if spec.name in _NO_FLAG:
            continue
        serve.add_argument(
            flag(spec.name),
            dest=spec.name,
            metavar=_METAVARS.get(spec.name, spec.name.upper()),
            # Values stay strings here: config.py converts and validates every source
            # alike, and None tells it the flag was not given.
            default=None,
            help=(
                f"{spec.metadata['help']} "
                f"(env {env_var(spec.name)}; default: {_show_default(spec.default)})"
            ),
        )
    # Parsed by postoffice.bench itself (see main); listed here for --help.
    commands.add_parser(
        "bench",
        add_help=False,
        help="measure a broker, this one or RabbitMQ (postoffice bench --help)",
    )
    return parser


def _show_default(value: object) -> str:
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    # argparse expands %-formats in help text.
    return str(value).replace("%", "%%")


def _serve(args: argparse.Namespace) -> int:
    flags = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(Settings)
        if spec.name not in _NO_FLAG
    }
    try:
        settings = load_settings(flags, os.environ, args.config)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    _configure_logging(settings.log_level)
    try:
        os.makedirs(settings.data_dir, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create data directory {settings.data_dir}: {exc.strerror}", 1)

    # Imported here so that --version and --help work even if the server does not.
    from postoffice.server import run
    from postoffice.store.errors import StoreError

    log.info("postoffice %s starting, data in %s", __version__, settings.data_dir)
    try:
        code = run(settings)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except OSError as exc:  # typically: the address is already in use
        log.critical("cannot run: %s", exc)
        return 1
    except StoreError as exc:  # the data directory is locked, newer, or failing
        log.critical("cannot run: %s", exc.text)
        return 1
    log.info("postoffice stopped")
    return code


def _fail(message: str, code: int) -> int:
    print(f"postoffice: error: {message}", file=sys.stderr)
    return code


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    # Replace our own handler when main() runs twice in a process (tests), and leave
    # anyone else's alone.
    for handler in root.handlers[:]:
        if handler.get_name() == "postoffice":
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("postoffice")
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)-8s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root.addHandler(handler)
    root.setLevel(level.upper())


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
