"""Drivers start, wait for, stop, inspect and recover a job's processes (a Docker driver comes later)."""
