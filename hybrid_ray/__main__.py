import sys

from hybrid_ray.cli import main

sys.exit(main())
