"""Which of the host's environment variables a job sees: an allow-list, never "all but the secrets".

The agent's own environment holds whatever started it: the server's, the user's shell, an SSH session.
A deny-list would have to know every secret in advance (the admin token was in every task's env once);
an allow-list passes what makes a host usable — where things are, locale, proxies, certificates, package
indexes, GPU libraries — and nothing else. A job's own variables come from its spec, on top of these.
Nothing named DSTACK_* passes, whatever a pattern says: those are dstack's, set by the agent per job.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, Mapping, Tuple

HOST_VARIABLES: Tuple[str, ...] = (
    # where things are, who runs them, how text is shown
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ", "TERM", "COLORTERM",
    "LANG", "LANGUAGE", "LC_*",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    # the network as the host reaches it
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FTP_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    # package tools' settings (index, offline mode, caches)
    "PIP_*", "UV_*", "CONDA_*", "PYTHONDONTWRITEBYTECODE",
    # GPU libraries and drivers
    "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "ROCM_PATH", "HIP_PATH",
    # a batch scheduler's facts about the allocation the job runs in (an agent started by Slurm)
    "SLURM_*",
)  # fmt: skip
_OURS = "DSTACK_"


def host_environment(environ: Mapping[str, str], extra: Iterable[str] = ()) -> Dict[str, str]:
    """The variables of `environ` a job may see: HOST_VARIABLES and the `extra` names or patterns."""
    patterns = [*HOST_VARIABLES, *extra]
    exact = {p for p in patterns if not _is_pattern(p)}
    globs = [p for p in patterns if _is_pattern(p)]
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(_OURS)
        and (name in exact or any(fnmatch.fnmatchcase(name, glob) for glob in globs))
    }


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")
