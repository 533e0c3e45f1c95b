"""`python -m rrf_ray.sweep NAME|PATH [--storage ...] [--resume] [--dry-run] [--set key=value ...]`.

The command line of the sweep engine (rrf_ray.engine.cli); the YAML's `experiment:` key
picks which registered experiment runs.
"""

import sys

from rrf_ray.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
