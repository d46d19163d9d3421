"""What a file job yields as it goes, in a module free of numpy so the command line can know it
without loading the job's machinery (:mod:`patchfold.jobs.plan` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One finished band: ``done`` of ``total`` bands, ``bytes_done`` of ``bytes_total`` written."""

    done: int
    total: int
    bytes_done: int
    bytes_total: int
