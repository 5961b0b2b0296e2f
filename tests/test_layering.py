"""Dependencies point one way, over the whole import graph of ``zcoin``.

consensus <- wire, settings <- storage, chain, mempool, mining <- node core <- drivers <- CLI.
A module may import modules of its own layer or below, never above; only drivers
(and the CLI above them) import ``zmq``; the node core and the tracker's state
machines read no clock and open no socket (the clock is injected).  Like the
purity test, this reads sources with ``ast`` (imports inside functions included).
Every module must be placed in a layer here, so a new module is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from test_consensus_purity import imported_modules

ZCOIN_DIR = Path(__file__).parents[1] / "zcoin"

LAYERS = {
    "consensus": 0,  # the rules (zcoin.consensus.* and its public face, zcoin.core)
    "base": 1,  # message encoding, settings, the misbehaviour book, tracker messages
    "state": 2,  # the store, the chain, the mempool, mining, wallets
    "core": 3,  # sans-I/O protocol logic: the node core and the tracker's state machines
    "driver": 4,  # sockets and loops around the cores, clients of the api
    "entry": 5,  # the command line and what only it uses
}
PLACES = {
    "zcoin": "entry", "zcoin.core": "consensus",
    "zcoin.wire": "base", "zcoin.config": "base", "zcoin.misbehaviour": "base", "zcoin.tracker": "base",
    "zcoin.tracker.protocol": "base",
    "zcoin.storage": "state", "zcoin.statecache": "state", "zcoin.sigchecks": "state", "zcoin.checksahead": "state",
    "zcoin.blocktree": "state", "zcoin.chain": "state", "zcoin.mempool": "state", "zcoin.mining": "state",
    "zcoin.wallet": "state",
    "zcoin.peers": "core", "zcoin.download": "core", "zcoin.nodeapi": "core", "zcoin.nodecore": "core",
    "zcoin.nodemining": "core", "zcoin.relay": "core",
    "zcoin.tracker.registry": "core", "zcoin.tracker.link": "core",
    "zcoin.sockets": "driver", "zcoin.node": "driver", "zcoin.memnet": "driver", "zcoin.client": "driver",
    "zcoin.payments": "driver",
    "zcoin.tracker.server": "driver", "zcoin.tracker.agent": "driver", "zcoin.tracker.lookup": "driver",
    "zcoin.explorer": "driver", "zcoin.explorer.cluster": "driver", "zcoin.explorer.api": "driver",
    "zcoin.explorer.metrics": "driver", "zcoin.explorer.events": "driver",
    "zcoin.cli": "entry", "zcoin.cli_dev": "entry", "zcoin.bench": "entry", "zcoin.log": "entry",
}
NO_CLOCK_OR_SOCKETS = frozenset({"zmq", "socket", "time", "threading", "asyncio", "select", "selectors"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ZCOIN_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted(ZCOIN_DIR.rglob("*.py"))]


def layer_of(name: str) -> int:
    if name == "zcoin.consensus" or name.startswith("zcoin.consensus."):
        return LAYERS["consensus"]
    while name not in PLACES and "." in name:  # `from zcoin.chain import Chain` names the module
        name = name.rsplit(".", 1)[0]
    return LAYERS[PLACES[name]]


def layering_violations(source: str, name: str, is_package: bool = False) -> list[str]:
    """What in ``source`` (module ``name``) imports upward, or imports what its layer may not."""
    own = layer_of(name)
    problems = []
    for imported in imported_modules(ast.parse(source), f"{name}.__init__" if is_package else name):
        top = imported.split(".")[0]
        if top == "zcoin" and imported != "zcoin" and layer_of(imported) > own:
            problems.append(f"{name} (layer {own}) imports {imported} (layer {layer_of(imported)})")
        elif top == "zmq" and own < LAYERS["driver"]:
            problems.append(f"{name} imports zmq but is not a driver")
        elif top in NO_CLOCK_OR_SOCKETS and own == LAYERS["core"]:
            problems.append(f"{name} imports {imported}: the core takes its clock and transport as arguments")
    return problems


def test_every_module_has_a_layer():
    unplaced = [name for name, _ in modules() if not name.startswith("zcoin.consensus") and name not in PLACES]
    assert unplaced == [], "place new modules in PLACES"


@pytest.mark.parametrize(("name", "path"), modules(), ids=[n for n, _ in modules()])
def test_module_imports_only_its_own_layer_or_below(name, path):
    if name in PLACES or name.startswith("zcoin.consensus"):
        assert layering_violations(path.read_text(), name, path.name == "__init__.py") == []


@pytest.mark.parametrize(("source", "name", "flagged"), [
    ("from zcoin.node import Node", "zcoin.chain", True),  # state imports a driver
    ("import zmq", "zcoin.nodecore", True),
    ("import time", "zcoin.download", True),
    ("from zcoin.nodecore import NodeCore", "zcoin.peers", False),  # same layer
    ("from zcoin.cli import main", "zcoin.node", True),
    ("from zcoin.chain import Chain", "zcoin.nodecore", False),
    ("import zmq", "zcoin.node", False),
    ("import time", "zcoin.node", False),
])
def test_layering_check_flags_what_it_should(source, name, flagged):
    assert bool(layering_violations(source, name)) is flagged
