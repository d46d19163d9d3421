"""Turning failures into one-line errors with the right exit code."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from patchfold.cli.options import as_click_error
from patchfold.cli.present import report_total
from patchfold.errors import PatchfoldError


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Map library and system errors to click errors: bad option values exit 2, runtime failures
    exit 1 with one ``Error: …`` line. ``PATCHFOLD_DEBUG=1`` shows the traceback instead."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        quiet_third_party_logs()
        if os.environ.get("PATCHFOLD_DEBUG") == "1":
            return _timed(command(*args, **kwargs), started)
        try:
            return _timed(command(*args, **kwargs), started)
        except PatchfoldError as error:
            raise as_click_error(error) from None
        except KeyboardInterrupt:
            click.echo(
                "Error: interrupted; no partial file was left (a dataset run resumes with the same command)", err=True
            )
            sys.exit(130)
        except MemoryError:
            raise click.ClickException("out of memory; lower --max-memory or use fewer inputs at once") from None
        except OSError as error:
            where = f"'{error.filename}': " if error.filename else ""
            raise click.ClickException(f"{where}{error.strerror or error}".replace("\n", " ")) from None

    return wrapper


#: Loggers of the readers patchfold uses, whose warnings Python would print on stderr (its
#: last-resort handler) in the middle of a command's output; the library folds the ones that
#: explain a failure into its error (``patchfold.io.logs``).
THIRD_PARTY_LOGGERS = ("tifffile", "zarr", "numcodecs", "imagecodecs")


def quiet_third_party_logs() -> None:
    """Give each of :data:`THIRD_PARTY_LOGGERS` a handler that drops its lines (once)."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())


def _timed(result: Any, started: float) -> Any:
    report_total(started)
    return result
