"""`python -m edgecnn`: the edgecnn command line."""

from edgecnn.cli import main

main()
