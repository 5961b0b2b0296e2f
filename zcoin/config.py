"""Settings, once: every default of every daemon, and the TOML files that override them.

A config file holds a ``[tracker]`` and/or ``[miner]`` table.  Each daemon
declares the keys it understands with their types and defaults here; flags given
on the command line override the file.  Any problem (unreadable file, bad TOML,
unknown key, wrong type) raises :class:`ConfigError` with one line naming the
file and the key.  The constants below are the only definition of each default:
the node core, the tracker, the membership agent and the CLI import them.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zcoin.consensus.params import ChainParams


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


# --- membership (tracker and the agent that miners run) ------------------------------

TRACKER_BIND = "tcp://127.0.0.1:9000"
TRACKER_EVENTS = "tcp://127.0.0.1:9001"
HEARTBEAT_INTERVAL_S = 2.0
LEASE_MISSES = 3  # heartbeat intervals a member may miss before it is dropped
LEASE_S = LEASE_MISSES * HEARTBEAT_INTERVAL_S
JOIN_ACK_TIMEOUT_S = 10.0  # a JOIN not ACKed within this leaves no trace
TRACKER_TRY_TIMEOUT_S = 2.5  # Lazy Pirate: one try at a tracker request, before the REQ is reopened
JOIN_DEADLINE_S = 30.0  # after this without membership a miner is in the timeout state
JOIN_BACKOFF_INITIAL_S = 1.0
JOIN_BACKOFF_MAX_S = 30.0
PEERS_TIMEOUT_S = 5.0  # overall budget of `zcoin peers`
MAX_MEMBERS = 4000  # keeps the largest LIST well under wire.MAX_MESSAGE_BYTES

TRACKER_CONFIG_SPEC: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "bind": (str, TRACKER_BIND),
    "events": (str, TRACKER_EVENTS),
    "advertise_events": (str, ""),
    "lease_s": ((int, float), LEASE_S),
    "join_ack_timeout_s": ((int, float), JOIN_ACK_TIMEOUT_S),
    "max_members": (int, MAX_MEMBERS),
    "state": (str, ""),  # file the members are kept in across restarts ("" = none)
}


def load_tracker_settings(config_path: str | None, *, bind: str | None = None,
                          events: str | None = None, state: str | None = None) -> dict[str, Any]:
    """The ``[tracker]`` table of ``config_path`` (defaults without one), flags overriding it."""
    settings = load_section(config_path, "tracker", TRACKER_CONFIG_SPEC)
    if bind:
        settings["bind"] = bind
    if events:
        settings["events"] = events
    if state:
        settings["state"] = state
    where = config_path or "defaults"
    for key in ("lease_s", "join_ack_timeout_s"):
        if not (math.isfinite(settings[key]) and settings[key] > 0):
            raise ConfigError(f"{where}: tracker.{key} must be a positive number")
    if not 0 < settings["max_members"] <= MAX_MEMBERS:
        raise ConfigError(f"{where}: tracker.max_members must be between 1 and {MAX_MEMBERS}")
    return settings


# --- miners -----------------------------------------------------------------------------

TIP_INTERVAL_S = 2.0  # how often peers compare tips
PEER_REQUEST_TIMEOUT_S = 5.0  # a peer's reply later than this counts as a stall
RETRY_AFTER_STALL_S = 10.0  # first wait before asking a peer again for what it failed to send; doubles
RETRY_AFTER_STALL_MAX_S = 300.0
SYNC_GRACE_S = 3.0  # a node with peers waits this long for their tips before it calls itself synced
RETEMPLATE_INTERVAL_S = 1.0  # at most this often a richer mempool restarts the mining job
CATCHING_UP_LOG_S = 2.0  # before its first sync a node logs its progress this often, not every block
MEMPOOL_SAVE_INTERVAL_S = 1.0  # transactions only relayed to a node reach its disk at least this often

MINER_CONFIG_SPEC: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "name": (str, None),
    "network": (str, "local"),
    "trackers": (list, [TRACKER_BIND]),
    "data_dir": (str, None),
    "api": (str, "tcp://127.0.0.1:*"),
    "gossip": (str, "tcp://127.0.0.1:*"),
    "workers": (int, None),
    "mine": (bool, True),
    "mining": (str, "continuous"),
    "wallet": (str, None),
    "join_deadline_s": ((int, float), JOIN_DEADLINE_S),
    "heartbeat_s": ((int, float), HEARTBEAT_INTERVAL_S),
}


@dataclass(frozen=True, slots=True)
class MiningMode:
    """When a miner searches: ``continuous``; ``interval`` (until it finds a block, then rests until
    the next ``interval_s`` slot); ``on-demand`` (only for ``zcoin generate``); ``off`` (no pool)."""

    kind: str = "continuous"
    interval_s: float = 0.0

    def __str__(self) -> str:
        return f"interval:{self.interval_s:g}" if self.kind == "interval" else self.kind


MINING_KINDS = ("continuous", "interval", "on-demand", "off")


def parse_mining_mode(text: str) -> MiningMode:
    """``continuous``, ``interval:SECONDS``, ``on-demand`` or ``off``; ConfigError otherwise."""
    kind, _, arg = text.strip().partition(":")
    if kind == "interval":
        try:
            seconds = float(arg)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 0 < seconds <= 86_400):
            raise ConfigError(f"mining mode {text!r}: interval:SECONDS needs 0 < SECONDS <= 86400")
        return MiningMode("interval", seconds)
    if kind not in MINING_KINDS or arg:
        raise ConfigError(f"mining mode {text!r}: expected continuous, interval:SECONDS, on-demand or off")
    return MiningMode(kind)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a miner node needs to start (the CLI fills it from flags and the config file)."""

    name: str
    params: ChainParams
    data_dir: Path
    api: str = "tcp://127.0.0.1:*"
    gossip: str = "tcp://127.0.0.1:*"
    trackers: tuple[str, ...] = ()
    mine: bool = True  # False: no mining pool at all (the same as mining mode off)
    mining: MiningMode = MiningMode()
    workers: int | None = None
    payout: bytes | None = None  # x-only key the coinbase pays; None: no mining
    join_deadline_s: float = JOIN_DEADLINE_S
    heartbeat_s: float = HEARTBEAT_INTERVAL_S
    tip_interval_s: float = TIP_INTERVAL_S
    sync_grace_s: float = SYNC_GRACE_S
    request_timeout_s: float = PEER_REQUEST_TIMEOUT_S
    retry_after_stall_s: float = RETRY_AFTER_STALL_S
