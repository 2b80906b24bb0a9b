"""``python -m supervisor`` is ``baton-supervisor``."""

import sys

from supervisor.cli import main

sys.exit(main())
