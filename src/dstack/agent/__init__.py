"""The dstack agent: runs the jobs a dstack server hands it on one host, served over an HTTP API.

Standard library only and Python 3.9+, so that it can be shipped to any host as a zipapp: nothing here may
import other dstack packages. Start it with `python -m dstack.agent --work-dir DIR` (token in the
DSTACK_AGENT_TOKEN environment variable).

Layout: main (process lifetime) -> httpserver (HTTP plumbing) -> api (endpoints) -> jobs/ (spec, state,
registry) and runner (prepare, start, wait, stop, recover) -> drivers/ (how processes run: process now,
docker later). Helpers: logstore + output (job output), unpack + codestore (code), procutil + reaper
(process trees), host (host facts), script (the commands as one bash script).
"""

__version__ = "0.1.0"
