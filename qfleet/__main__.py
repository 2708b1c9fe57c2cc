"""`python -m qfleet ...` is the `qfleet` command line."""
import sys

from qfleet.deploy.cli import main

sys.exit(main())
