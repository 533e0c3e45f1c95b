"""`python -m rrf_ray.report SWEEP_DIR`: rebuild any sweep's report from its directory alone
(its spec.json names the experiment whose report writer runs)."""

import sys

from rrf_ray.engine.cli import report_main

if __name__ == "__main__":
    sys.exit(report_main())
