"""Logging set-up: loguru, configured once by each entry point.

Library code logs through ``from loguru import logger`` with structured fields
(``logger.bind(node=...)`` or keyword arguments); only entry points call
:func:`setup_logging`.  Lines read ``time level component message key=value ...``,
or are one JSON object each with ``--log-json``.
"""

from __future__ import annotations

import sys

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
        logger.add(sys.stderr, level=level.upper(), serialize=True)
    else:
        logger.add(sys.stderr, level=level.upper(), format=_format, colorize=None)
