"""python -m servelab {bench,ceiling,profile,sweep} ...: see servelab/bench/cli.py, or add --help."""

import sys

from servelab.bench.cli import main

sys.exit(main())
