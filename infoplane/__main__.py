"""``python -m infoplane``: the same command line as the ``infoplane`` script."""
import sys

from infoplane.cli import main

if __name__ == "__main__":
    sys.exit(main())
