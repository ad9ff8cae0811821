"""`python -m safemax_ray.cli` is `safemax-ray` (the cluster manifests' entry points use it)."""

import sys

from safemax_ray.cli import main

sys.exit(main())
