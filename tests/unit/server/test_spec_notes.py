"""What the plan says about fields honoured differently here, or not at all, and what it refuses."""

from __future__ import annotations

import pytest

from dstack.config import parse_overrides, resolve_profile
from dstack.config.loader import parse_configuration
from dstack.server.services.spec_notes import notes_for, refusal_for

BACKENDS = "and this product's backends (local, ssh, slurm) run on hosts that already exist."


def notes(extra: str, commands: str = "commands: [a]\n") -> list[str]:
    configuration = parse_configuration("type: task\n" + extra + commands, filename="t.dstack.yml")
    return notes_for(configuration, resolve_profile(configuration, None, parse_overrides()))


def refusal(extra: str, commands: str = "commands: [a]\n") -> str | None:
    return refusal_for(parse_configuration("type: task\n" + extra + commands, filename="t.dstack.yml"))


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (
            "tags: {team: ml}\n",
            f"tags has no effect here: it tags the cloud resources a backend creates, {BACKENDS}",
        ),
        (
            "idle_duration: 1h\n",
            "idle_duration has no effect here: it is how long a backend keeps an idle cloud",
        ),
        (
            "creation_policy: reuse\n",
            "creation_policy has no effect here: it says whether a backend may create",
        ),
        ("instance_types: [p4d]\n", "instance_types has no effect here: it names cloud instance types,"),
        (
            "availability_zones: [a]\n",
            "availability_zones has no effect here: it names cloud availability zones,",
        ),
        ("reservation: cr-1\n", "reservation has no effect here: it names a cloud capacity reservation,"),
        (
            "backend_options: {aws: {}}\n",
            "backend_options has no effect here: it holds options of cloud backends,",
        ),
        (
            "spot_policy: auto\n",
            "spot_policy auto: no host here is a spot instance, so the run is on-demand.",
        ),
        (
            "home_dir: /x\n",
            "home_dir has no effect (deprecated in dstack as well): HOME is the task user's own.",
        ),
        (
            "setup: [a]\n",
            "setup is deprecated: its command runs before commands (move them to the start of commands).",
        ),
        ("setup: [a, b]\n", "setup is deprecated: its 2 commands run before commands"),
        (
            "single_branch: true\n",
            "single_branch has no effect: it applies to cloning a repo given by url in repos.",
        ),
        ("startup_order: master-first\n", "startup_order has no effect on a single-node task"),
        ("stop_criteria: master-done\n", "stop_criteria has no effect on a single-node task"),
        (
            "privileged: true\n",
            "privileged has no effect without image: the task runs as processes with the agent's privileges.",
        ),
        ("registry_auth: {password: x}\n", "registry_auth has no effect without image: no image is pulled."),
        (
            "volumes: ['/mnt/data:/data']\n",
            "Volume /mnt/data:/data: a task without image sees /mnt/data at its own path and as "
            "./data in its "
            "working directory (only a container can have /data).",
        ),
        (
            "dstack: true\n",
            "dstack: true gives the task DSTACK_SERVER_URL, DSTACK_PROJECT and a DSTACK_TOKEN",
        ),
        (
            "utilization_policy: {min_gpu_utilization: 5, time_window: 5m}\n",
            "utilization_policy cannot be measured: the task holds no GPU (ask for one in resources.gpu).",
        ),
    ],
)
def test_each_field_gets_its_line(extra: str, line: str) -> None:
    found = notes(extra)
    assert any(note.startswith(line) for note in found), found


def test_fields_honoured_as_written_get_no_line() -> None:
    assert notes("priority: 5\nstop_duration: 1m\nshell: sh\nentrypoint: python3\n") == []
    assert notes("image: ubuntu\nprivileged: true\nuser: nobody\nvolumes: ['/a:/b']\n") == []
    assert notes("nodes: 2\nstartup_order: workers-first\n") == []


def test_docker_in_docker_and_node_groups_are_refused_in_one_sentence() -> None:
    assert refusal("docker: true\n") == (
        "docker: true (Docker-in-Docker) cannot run here: it needs dstack's dind image, which this "
        "product does "
        "not provide and cannot pull; run the commands in an image of your own with image: instead."
    )
    assert refusal("nodes: 3\n") is None  # multi-node runs: the plan says where they fit
    assert refusal("groups: [{commands: [a]}, {commands: [b]}]\n", commands="") == (
        "A task with node groups (2 groups) cannot run here yet: its nodes would each need their own "
        "commands and resources; give every node the same ones with nodes: N instead."
    )
    assert refusal("nodes: 1\n") is None
