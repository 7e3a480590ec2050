"""dstack: run AI tasks on your own machine, servers and clusters."""

__version__ = "0.1.0"
