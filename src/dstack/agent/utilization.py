"""`utilization_policy`: stop a running job when any of its GPUs stays under a utilisation threshold for a
whole time window (dstack's rule). Utilisation comes from nvidia-smi; where it does not answer, nothing is
measured and the job is never stopped for it (the plan says so beforehand).

Standard library only (Python 3.9).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from dstack.agent.gpus import query_nvidia_smi
from dstack.agent.jobs.job import Job

log = logging.getLogger(__name__)

QUERY = ["--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"]
MAX_SAMPLE_SECONDS = 30.0
REASON_PREFIX = "Terminated due to utilization policy"


def read_utilization() -> Optional[Dict[int, float]]:
    """{GPU index: utilisation %} from nvidia-smi, or None where it cannot be read."""
    output = query_nvidia_smi(QUERY)
    return parse_utilization(output) if output is not None else None


def parse_utilization(text: str) -> Dict[int, float]:
    found: Dict[int, float] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            found[int(parts[0])] = float(parts[1])
        except ValueError:
            continue  # e.g. "[N/A]"
    return found


class UtilizationWindow:
    """Samples of the job's GPUs over the last `window` seconds; breached once every sample of one GPU
    in a full window is below the threshold."""

    def __init__(self, gpus: List[int], threshold: int, window: float, started: float) -> None:
        self.gpus = list(gpus)
        self.threshold = threshold
        self.window = window
        self.started = started
        self._samples: Deque[Tuple[float, Dict[int, float]]] = deque()

    def add(self, at: float, values: Dict[int, float]) -> None:
        self._samples.append((at, values))
        while self._samples and self._samples[0][0] < at - self.window:
            self._samples.popleft()

    def breached(self, now: float) -> Optional[int]:
        """The first of the job's GPUs that stayed under the threshold for the whole window, or None."""
        if now - self.started < self.window or not self._samples:
            return None
        for gpu in self.gpus:
            values = [sample[gpu] for _, sample in self._samples if gpu in sample]
            if values and all(value < self.threshold for value in values):
                return gpu
        return None


class UtilizationWatch:
    def __init__(
        self,
        job: Job,
        stop: Callable[..., object],
        read: Callable[[], Optional[Dict[int, float]]] = read_utilization,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = job.spec.utilization_policy
        assert policy is not None
        self._job = job
        self._stop_job = stop
        self._read = read
        self._clock = clock
        self._window = UtilizationWindow(
            job.spec.resources.gpus, policy.min_gpu_utilization, float(policy.time_window), clock()
        )
        self._interval = min(MAX_SAMPLE_SECONDS, max(0.05, policy.time_window / 10.0))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"utilization-{job.id}", daemon=True)

    def start(self) -> UtilizationWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        policy = self._job.spec.utilization_policy
        assert policy is not None
        while not self._done.wait(self._interval):
            values = self._read()
            if values is None:
                continue  # nothing can be measured now; no sample, so no breach either
            now = self._clock()
            self._window.add(now, values)
            gpu = self._window.breached(now)
            if gpu is not None:
                reason = (
                    f"{REASON_PREFIX}: GPU {gpu} stayed below {policy.min_gpu_utilization}% "
                    f"for {policy.time_window} s"
                )
                log.info("Job %s: %s", self._job.id, reason)
                self._stop_job(self._job, abort=False, grace_seconds=None, reason=reason)
                return


def start_utilization_watch(job: Job, stop: Callable[..., object]) -> Optional[UtilizationWatch]:
    """Watch the job's GPUs if it has a utilization_policy and holds GPUs; None otherwise."""
    if job.spec.utilization_policy is None or not job.spec.resources.gpus:
        return None
    return UtilizationWatch(job, stop).start()
