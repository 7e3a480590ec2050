"""What the plan says about today's dstack's fields that a backend here cannot honour as written.

Every field is accepted; none is silently ignored. A field with no effect on any backend of this product
(a cloud provisioning option) gets a note saying so and why; a field honoured differently for a task
without image gets a note saying how; what cannot run here at all is a refusal (one sentence), which the
plan shows and a submission returns as its error.
"""

from __future__ import annotations

from dstack.config import SpotPolicy, TaskConfiguration
from dstack.config.resolve import EffectiveProfile

BACKENDS_HERE = "local, ssh, slurm"
# Provisioning options of cloud backends: why each cannot have an effect here.
_CLOUD_ONLY = {
    "tags": "it tags the cloud resources a backend creates",
    "idle_duration": "it is how long a backend keeps an idle cloud instance",
    "creation_policy": "it says whether a backend may create a cloud instance",
    "instance_types": "it names cloud instance types",
    "availability_zones": "it names cloud availability zones",
    "reservation": "it names a cloud capacity reservation",
    "backend_options": "it holds options of cloud backends",
}


def notes_for(configuration: TaskConfiguration, profile: EffectiveProfile) -> list[str]:
    """One line per field the user set that is honoured differently here, or has no effect."""
    notes = []
    for field, why in _CLOUD_ONLY.items():
        if getattr(profile, field) is not None:
            notes.append(
                f"{field} has no effect here: {why}, and this product's backends ({BACKENDS_HERE}) "
                "run on hosts that already exist."
            )
    if configuration.setup:
        count = len(configuration.setup)
        notes.append(
            "setup is deprecated: "
            + (f"its {count} commands run" if count > 1 else "its command runs")
            + " before commands (move them to the start of commands)."
        )
    if configuration.home_dir is not None:
        notes.append("home_dir has no effect (deprecated in dstack as well): HOME is the task user's own.")
    if profile.spot_policy == SpotPolicy.AUTO:
        notes.append("spot_policy auto: no host here is a spot instance, so the run is on-demand.")
    if configuration.single_branch is not None and not any(r.url for r in configuration.repos):
        notes.append("single_branch has no effect: it applies to cloning a repo given by url in repos.")
    if not configuration.is_multi_node:
        for field in ("startup_order", "stop_criteria"):
            if getattr(profile, field) is not None:
                notes.append(
                    f"{field} has no effect on a single-node task (it orders the nodes of a cluster)."
                )
    notes += _process_notes(configuration)
    if configuration.dstack:
        notes.append(
            "dstack: true gives the task DSTACK_SERVER_URL, DSTACK_PROJECT and a DSTACK_TOKEN that acts in "
            "this project only, while the run is unfinished (never the admin's token)."
        )
    if profile.utilization_policy is not None and profile.resources.gpu is None:
        notes.append(
            "utilization_policy cannot be measured: the task holds no GPU (ask for one in resources.gpu)."
        )
    return notes


def _process_notes(configuration: TaskConfiguration) -> list[str]:
    if configuration.image is not None:
        return []
    notes = []
    if configuration.privileged:
        notes.append(
            "privileged has no effect without image: the task runs as processes with the agent's privileges."
        )
    if configuration.registry_auth is not None:
        notes.append("registry_auth has no effect without image: no image is pulled.")
    for volume in configuration.volumes:
        relative = volume.path.lstrip("/")
        notes.append(
            f"Volume {volume}: a task without image sees {volume.instance_path} at its own path and as "
            f"./{relative} in its working directory (only a container can have {volume.path})."
        )
    return notes


def refusal_for(configuration: TaskConfiguration) -> str | None:
    """Why this task cannot run on any backend here (one sentence), or None."""
    if configuration.docker:
        return (
            "docker: true (Docker-in-Docker) cannot run here: it needs dstack's dind image, which this "
            "product does not provide and cannot pull; run the commands in an image of your own with image: "
            "instead."
        )
    if configuration.groups:
        return (
            f"A task with node groups ({len(configuration.groups)} groups) cannot run here yet: its nodes "
            "would each need their own commands and resources; give every node the same ones with "
            "nodes: N instead."
        )
    return None
