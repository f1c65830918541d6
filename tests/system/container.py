"""The system tests' name for support.container (tests/support/container.py),
kept so that `import container` goes on working in tests/system/."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support import container as _container  # noqa: E402

sys.modules[__name__] = _container
