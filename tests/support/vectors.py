"""Bitcoin's test vectors, read from the shared checkout next to the repository.

The vectors live in ``../shared/vectors`` (see its README).  :func:`vector_cases`
lists, for each parametrized fixture name (``header_case``,
``bip340_sign_case``, ...), its cases with a readable id; the
``pytest_generate_tests`` hook of ``tests/conftest.py`` turns each one into a
test case of its own.
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors"


@cache
def load_json(name: str) -> dict[str, Any]:
    """One JSON vector file, parsed."""
    path = VECTORS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"vector file {path} is missing (expected ../shared/vectors)")
    return json.loads(path.read_text())


@cache
def load_bip340() -> list[dict[str, str]]:
    """The rows of BIP340's test-vectors.csv."""
    with (VECTORS_DIR / "bip340.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:60]


def _bip340_rows(predicate) -> list[tuple[str, dict[str, str]]]:
    return [(f"bip340-{row['index']}", row) for row in load_bip340() if predicate(row)]


def _message_is_32_bytes(row: dict[str, str]) -> bool:
    return len(row["message"]) == 64


def vector_cases() -> dict[str, list[tuple[str, Any]]]:
    """Every parametrized vector fixture: name -> [(id, case), ...]."""
    headers = load_json("headers.json")
    compact = load_json("compact_bits.json")
    retarget = load_json("retarget.json")
    return {
        "header_case": [(f"mainnet-{h['height']}", h) for h in headers["headers"]]
        + [(f"{h['network']}-genesis", h) for h in headers["other_networks_genesis"]],
        "merkle_case": [(_slug(b["name"]), b) for b in load_json("merkle.json")["blocks"]],
        "set_compact_case": [(c["compact"], c) for c in compact["set_compact_vectors"]],
        "get_compact_case": [(c["get_compact"], c) for c in compact["get_compact_vectors"]],
        "real_bits_case": [(c["compact"], c) for c in compact["real_chain_bits"]],
        "pow_rejection_case": [(c["test"], c) for c in compact["check_proof_of_work_rejections"]],
        "retarget_case": [(c["test"], c) for c in retarget["vectors"]],
        "bip340_sign_case": _bip340_rows(lambda r: r["secret key"] and _message_is_32_bytes(r)),
        "bip340_verify_case": _bip340_rows(_message_is_32_bytes),
        "bip340_bad_message_case": _bip340_rows(lambda r: not _message_is_32_bytes(r)),
    }
