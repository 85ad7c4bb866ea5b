"""Log setup: plain text for people, JSON lines for log shippers.

The JSON formatter is a dozen lines written here rather than a dependency: it only has
to put the standard record fields and the exception text into one object per line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    """Send tillwatch's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect attempt at WARNING/ERROR; our stream logs the
    # outage once, so quiet the driver unless debugging.
    for noisy in ("kafka", "urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(
            max(logging.getLevelName(level), logging.WARNING)
            if level != "DEBUG"
            else logging.DEBUG
        )
