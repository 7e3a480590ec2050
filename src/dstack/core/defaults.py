"""Defaults the CLI and the server share (cheap to import: the CLI builds its parser with them)."""

from __future__ import annotations

# Where a server listens unless told otherwise, the embedded one included. Not 3000, 5000, 8000, 8080,
# 8888, 7860...: users' apps take those, and their local ports must stay free for forwarding (the tasks
# guide forwards 3000). Below Linux's ephemeral range (32768-60999), and unlisted in /etc/services.
DEFAULT_SERVER_PORT = 28475
