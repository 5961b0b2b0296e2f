"""Configuration files: TOML (stdlib ``tomllib``), one table per daemon.

A config file holds a ``[tracker]`` and/or ``[miner]`` table.  Each daemon
declares the keys it understands with their types and defaults; flags given on
the command line override the file.  Any problem (unreadable file, bad TOML,
unknown key, wrong type) raises :class:`ConfigError` with one line naming the
file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and key."""


def load_section(path: str | Path | None, section: str, spec: dict[str, tuple[type | tuple[type, ...], Any]]) -> dict[str, Any]:
    """Read table ``section`` of the TOML file at ``path`` against ``spec``.

    ``spec`` maps each allowed key to ``(type or types, default)``.  Returns a
    dict with every key of ``spec``: the file's value where given, the default
    otherwise.  With ``path`` None, the defaults alone.
    """
    values = {key: default for key, (_, default) in spec.items()}
    if path is None:
        return values
    path = Path(path)
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key, value in table.items():
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise ConfigError(f"{path}: unknown key {section}.{key} (known: {known})")
        types, _ = spec[key]
        types = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{path}: {section}.{key} must be {_type_names(types)}, not a boolean")
        if not isinstance(value, types):
            raise ConfigError(f"{path}: {section}.{key} must be {_type_names(types)}, not {type(value).__name__}")
        values[key] = value
    return values


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join({int: "an integer", float: "a number", str: "a string", bool: "a boolean",
                        list: "a list"}.get(t, t.__name__) for t in types)
