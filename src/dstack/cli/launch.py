"""The `dstack` executable: hand the command to the warm command process if one answers, else run it
here (dstack.cli.warm_client explains why; this module imports nothing else before deciding)."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from dstack.cli import warm_client

    try:
        code = warm_client.run(sys.argv)
    except KeyboardInterrupt:
        return 130
    if code is not None:
        os._exit(code & 0xFF)  # nothing of this process's own to flush or free
    from dstack.cli.main import main as run_here

    return run_here()


if __name__ == "__main__":
    raise SystemExit(main())
