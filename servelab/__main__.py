"""python -m servelab {bench,ceiling,profile,sweep,simulate} ...: see servelab/bench/cli.py, or add --help."""

import sys

from servelab.bench.cli import main

sys.exit(main())
