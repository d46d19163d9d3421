"""The one exception type patchfold raises for bad input."""

from __future__ import annotations


class PatchfoldError(ValueError):
    """Invalid parameters, geometry or input data.

    ``param`` names the parameter at fault (``"kernel_size"``, ``"stride"``...) when the value is
    wrong on its own, so a command line can report it as a bad option; it is ``None`` when the fault
    only shows against the input (a kernel larger than the padded image, a corrupt file).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
