"""Images for container tasks: make sure the image is here (pulling it if not), and the build cache.

A built image is the build container committed as `dstack-build:<key>`, with the base image's own
entrypoint, command, env and working directory kept. A rebuild commits over the same tag; the image it
replaces is removed if no container uses it any more (the daemon refuses otherwise, which is fine).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional

from dstack.agent.drivers.dockerapi import DockerCancelled, DockerClient, DockerError

log = logging.getLogger(__name__)

BUILD_REPOSITORY = "dstack-build"
_PULL_NOTE_EVERY_SECONDS = 2.0


class ImageError(Exception):
    """The image cannot be had; the message is one sentence."""


class PullCancelled(Exception):
    pass


def build_reference(key: str) -> str:
    return f"{BUILD_REPOSITORY}:{key}"


class Images:
    def __init__(self, client: DockerClient) -> None:
        self._client = client

    def ensure(
        self,
        name: str,
        notify: Callable[[str], object],
        cancelled: Callable[[], bool],
        auth: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """The image's inspect data, pulling it first (with `auth`, if given) if this host lacks it."""
        try:
            info = self._client.inspect_image(name)
            if info is not None:
                return info
            notify(f"Pulling image {name}")
            last_note = [time.monotonic()]

            def progress(status: str) -> None:
                # Progress lines come many a second; the run's status shows one now and then.
                if time.monotonic() - last_note[0] >= _PULL_NOTE_EVERY_SECONDS:
                    last_note[0] = time.monotonic()
                    notify(f"Pulling image {name}: {status}")

            self._client.pull(name, progress, cancelled, auth)
            info = self._client.inspect_image(name)
        except DockerCancelled as e:
            raise PullCancelled() from e
        except DockerError as e:
            raise ImageError(_pull_failure(name, str(e), auth is not None)) from e
        if info is None:
            raise ImageError(f"Image {name} is not on this host after pulling it")
        return info

    def cached_build(self, key: str) -> Optional[Dict[str, Any]]:
        try:
            return self._client.inspect_image(build_reference(key))
        except DockerError as e:
            raise ImageError(f"Could not look up the cached build: {e}") from e

    def commit_build(self, container_id: str, key: str, base: Dict[str, Any]) -> str:
        """Commit the build container as the key's image; returns its reference."""
        previous = self.cached_build(key)
        base_config = base.get("Config") or {}
        # The daemon fills whatever is left empty here from the build container's own config (its
        # wrapper entrypoint among them): empty lists, not nulls, keep the base image's choices.
        config: Dict[str, Any] = {
            name: base_config.get(name) for name in ("WorkingDir", "User", "ExposedPorts", "StopSignal")
        }
        for name in ("Entrypoint", "Cmd", "Env"):
            config[name] = base_config.get(name) or []
        config["Labels"] = {**(base_config.get("Labels") or {}), "dstack.build.key": key}
        try:
            image_id = self._client.commit(container_id, BUILD_REPOSITORY, key, config)
        except DockerError as e:
            raise ImageError(f"Could not save the built image: {e}") from e
        if previous is not None and previous.get("Id") != image_id:
            try:
                self._client.remove_image(str(previous["Id"]))
            except DockerError as e:
                log.info("Kept the superseded build image %s: %s", str(previous["Id"])[:19], e)
        return build_reference(key)


def _pull_failure(name: str, error: str, with_auth: bool) -> str:
    """One sentence; a registry that wants credentials is told apart from other failures."""
    lowered = error.lower()
    if any(
        word in lowered for word in ("unauthorized", "authentication required", "denied", "no basic auth")
    ):
        if with_auth:
            why = "the registry refused the credentials in registry_auth"
        else:
            why = "the registry requires credentials; give them in registry_auth"
        return f"Could not pull image {name}: {why} ({error})"
    return f"Could not pull image {name}: {error}"
