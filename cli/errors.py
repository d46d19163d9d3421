"""Turning failures into one-line errors with the right exit code."""

from __future__ import annotations

import functools
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


def _timed(result: Any, started: float) -> Any:
    report_total(started)
    return result
