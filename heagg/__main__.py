"""``python -m heagg`` runs the command line, like the ``heagg`` script."""

from heagg.cli import main

main()
