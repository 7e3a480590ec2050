"""The web UI: served by `dstack server` on its own port (see `app.py`), built on the API the CLI uses."""
