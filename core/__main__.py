"""``python -m patchfold`` runs the command line."""

from patchfold.cli.main import run

run()
