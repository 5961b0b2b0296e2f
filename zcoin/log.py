"""Logging set-up: loguru, configured once by each entry point.

Library code logs through ``from loguru import logger`` with structured fields
(``logger.bind(node=...)`` or keyword arguments); only entry points call
:func:`setup_logging`.
"""

from __future__ import annotations

import sys

from loguru import logger

LOG_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[component]}</cyan> {message} <dim>{extra}</dim>"
)


def setup_logging(level: str = "INFO", json: bool = False, component: str = "zcoin") -> None:
    """Send log lines to stderr at ``level``; one JSON object per line when ``json``."""
    logger.remove()
    logger.configure(extra={"component": component})
    if json:
        logger.add(sys.stderr, level=level.upper(), serialize=True)
    else:
        logger.add(sys.stderr, level=level.upper(), format=LOG_FORMAT, colorize=None)
