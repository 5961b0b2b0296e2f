"""Logging set-up: loguru, configured once by each entry point.

Library code logs through ``from loguru import logger`` with structured fields
(``logger.bind(node=...)`` or keyword arguments); only entry points call
:func:`setup_logging`.  Lines read ``time level component message key=value ...``,
or with ``--log-json`` are one flat JSON object each: ``time`` (Unix seconds),
``level``, ``component``, ``message``, the fields, and ``exception`` when there is
one (flat for log shippers, and a tenth of the size of loguru's own ``serialize``
records, which a syncing node writing a line per block would pay for).
"""

from __future__ import annotations

import json as jsonlib
import sys
import traceback

from loguru import logger

_TEMPLATE = ("<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{extra[component]}</cyan> "
             "{message}<dim>{extra[_fields]}</dim>\n{exception}")


def _format(record) -> str:
    extra = record["extra"]
    fields = " ".join(f"{key}={value}" for key, value in extra.items() if not key.startswith("_") and key != "component")
    extra["_fields"] = f" {fields}" if fields else ""
    extra.setdefault("component", "zcoin")
    return _TEMPLATE


def setup_logging(level: str = "INFO", json: bool = False, component: str = "zcoin") -> None:
    """Send log lines to stderr at ``level``; one JSON object per line when ``json``."""
    logger.remove()
    logger.configure(extra={"component": component})
    if json:
        logger.add(_json_line, level=level.upper(), format="{message}")
    else:
        logger.add(sys.stderr, level=level.upper(), format=_format, colorize=None)


def _json_line(message) -> None:
    """A loguru sink: the record as one flat JSON object on stderr."""
    record = message.record
    line = {"time": round(record["time"].timestamp(), 6), "level": record["level"].name,
            "component": record["extra"].get("component", "zcoin"), "message": record["message"]}
    line.update((key, value) for key, value in record["extra"].items() if not key.startswith("_") and key != "component")
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        line["exception"] = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(jsonlib.dumps(line, default=str) + "\n")
