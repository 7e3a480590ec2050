from __future__ import annotations

import sys

from dstack.agent.main import main

if __name__ == "__main__":
    sys.exit(main())
