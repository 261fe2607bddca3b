"""`python -m edgecnn.cli`: the edgecnn command line."""

from edgecnn.cli import main

main()
