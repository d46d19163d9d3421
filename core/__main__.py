"""``python -m patchfold`` runs the command line."""

from patchfold.cli.main import main

main()
