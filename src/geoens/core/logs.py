"""Logging set-up shared by workflow scripts and the CLI: one log file per job, tqdm routed into it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the ``geoens`` logger (and warnings) to ``log_file`` and stderr.

    Args:
        log_file: The job's log (``snakemake.log[0]``); its folder is created. ``None`` logs to stderr only.
        level: Logging level.

    Returns:
        The ``geoens`` logger.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
    logger = logging.getLogger("geoens")

    def log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        # An uncaught error ends up in the job's log, which Snakemake shows for a failed job.
        logger.critical("failed: %s", exc, exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught
    return logger


class TqdmToLogger:
    """A file-like object for ``tqdm(file=...)`` that writes progress lines to a logger."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self.logger = logger
        self.level = level

    def write(self, buf: str) -> int:
        """Log a progress line (blank writes are dropped)."""
        text = buf.strip("\r\n\t ")
        if text:
            self.logger.log(self.level, text)
        return len(buf)

    def flush(self) -> None:
        """Nothing to flush."""
