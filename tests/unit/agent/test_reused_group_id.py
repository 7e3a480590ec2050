"""A job's process group id, taken by another process once the job's group is empty (pids wrap at 32768 by
default), must not make that process (or its group) the job's: the job would never end, as a fleet host's
`sleep infinity` once kept a finished job running."""

from __future__ import annotations

import subprocess
import sys

from dstack.agent.procutil import find_job_processes, start_ticks


def test_a_group_led_by_a_process_that_took_the_id_later_is_not_the_jobs() -> None:
    # A process leading its own group with no job marker: the shape a reused id has.
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True, env={}
    )
    try:
        started = start_ticks(other.pid)
        assert started is not None
        # Without the group's start time, the group is taken as the job's (what the old code did).
        assert find_job_processes("job-marker", pgid=other.pid) == {other.pid}
        # The job's first process started earlier (one clock tick is enough): this group is another one.
        assert find_job_processes("job-marker", pgid=other.pid, group_started=started - 1) == set()
        # Its own start time: the job's group it is.
        assert find_job_processes("job-marker", pgid=other.pid, group_started=started) == {other.pid}
    finally:
        other.kill()
        other.wait()
