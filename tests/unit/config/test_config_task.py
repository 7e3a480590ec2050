"""The rules of a task configuration, each with its exact message and position."""

from __future__ import annotations

import pytest
from config_testkit import FILENAME, error_of, parse, task

from dstack.config import PortMapping, Retry, RetryEvent, SpotPolicy, TaskConfiguration

ALLOWED = (
    "availability_zones, backend_options, backends, build, commands, creation_policy, docker, dstack, "
    "entrypoint, env, files, fleets, groups, home_dir, idle_duration, image, instance_types, instances, "
    "max_duration, max_price, name, nodes, nvcc, ports, priority, privileged, python, regions, "
    "registry_auth, repos, reservation, resources, retry, retry_policy, schedule, setup, shell, "
    "single_branch, spot_policy, startup_order, stop_criteria, stop_duration, tags, type, user, "
    "utilization_policy, volumes, working_dir"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "type: task\nname: x1\ncomands:\n  - a\n",
            f"3:1: Unknown key 'comands' in task (did you mean commands?); allowed keys: {ALLOWED}",
        ),
        (
            task("resources:\n  gpus: 2\n"),
            "3:3: Unknown key 'gpus' in resources (did you mean gpu?); allowed keys: cpu, disk, gpu, memory, "
            "shm_size",
        ),
        (
            task("resources:\n  gpu:\n    nam: A100\n"),
            "4:5: Unknown key 'nam' in gpu (did you mean name?); allowed keys: count, memory, name, vendor",
        ),
        (
            task("retry:\n  limit: 3h\n"),
            "3:3: Unknown key 'limit' in retry; allowed keys: duration, on_events",
        ),
        ("commands: [a]\n", "1:1: Missing 'type'; add 'type: task' at the top of the file"),
        (
            "type: service\ncommands: [a]\n",
            "1:7: Configuration type 'service' is not supported (today's dstack runs it, this product does "
            "not); this product runs type: task (dstack run or dstack apply) and type: fleet (dstack apply)",
        ),
        (
            "type: [task]\ncommands: [a]\n",
            "1:1: Invalid configuration type (a list); this product runs type: task (dstack run or dstack "
            "apply) and type: fleet (dstack apply)",
        ),
        ("type: task\n", "1:1: Missing 'commands'; add a list of commands to run (or set image)"),
        (
            "type: task\ncommands: []\n",
            "2:1: The commands list is empty; add at least one command to run (or set image)",
        ),
        (
            "type: task\ncommands: python train.py\n",
            "2:11: Expected a list of strings for 'commands', got a string; use a YAML list with one "
            "'- command' per line",
        ),
        (
            "type: task\ncommands:\n  - echo a: b\n",
            "3:5: Command 1 in 'commands' was read as a mapping because it contains ': '; quote the whole "
            'command, e.g. - "echo a: b"',
        ),
        (
            "type: task\nbuild:\n  - pip install x\n  - 42\ncommands: [a]\n",
            "4:5: Command 2 in 'build' is an integer, not a string; quote it",
        ),
        ("type: task\ncommands: [a, '  ']\n", "2:15: Command 2 in 'commands' is empty; remove it"),
        (
            task("image: ubuntu\npython: '3.11'\n"),
            "3:1: The keys image and python are mutually exclusive; remove python to use the image's Python, "
            "or image to use the default environment",
        ),
        (
            task("python: 3.8\n"),
            "2:9: Invalid python version '3.8': use one of 3.9, 3.10, 3.11, 3.12, 3.13, 3.14, e.g. "
            'python: "3.11"',
        ),
        (task("python: 3.1\n"), "2:9: Invalid python version '3.1': use one of 3.9, 3.10"),
        (task("image: ''\n"), "2:8: The image name is blank; name a Docker image such as ubuntu:22.04"),
        (
            task("name: Train_Llama\n"),
            "2:7: Invalid run name 'Train_Llama'; use 2 to 41 lowercase letters, digits and '-', starting "
            "with a letter (e.g. train-llama)",
        ),
        (
            task("working_dir: /src\n"),
            "2:14: Invalid working_dir '/src': an absolute working_dir is the container's working directory "
            "and needs image (a task without image runs as processes on the host, outside any container); "
            "give a folder relative to the code root",
        ),
        (task("working_dir: a/../../etc\n"), "2:14: Invalid working_dir 'a/../../etc': it must stay inside"),
        (
            task("spot_policy: cheap\n"),
            "2:14: Invalid value 'cheap' for 'spot_policy'; allowed: spot, on-demand, auto",
        ),
        (
            task("backends: [local, azur]\n"),
            "2:19: Invalid value 'azur' for 'backends[1]'; allowed: local, ssh, slurm, amddevcloud, aws",
        ),
        (
            task("regions: us-east\n"),
            "2:10: Expected a list for 'regions', got a string; use a YAML list with one '- item' per line",
        ),
        (task("max_price: 0\n"), "2:12: The value of 'max_price' must be greater than 0, got 0"),
        (task("max_price: true\n"), "2:12: Invalid max_price true: use a price in USD per hour, e.g. 0.5"),
        (task("max_duration: -1\n"), "2:15: Invalid duration -1: a duration cannot be negative"),
        (task("max_duration: 2y\n"), "2:15: Invalid duration '2y': use seconds or a number with a unit"),
        (task("retry:\n  on_events: []\n"), "3:3: The list 'retry.on_events' must not be empty"),
        (
            task("retry:\n  on_events: [capacity]\n"),
            "3:15: Invalid value 'capacity' for 'retry.on_events[0]'; "
            "allowed: no-capacity, interruption, error",
        ),
        (
            task("retry: yes\n"),
            "2:8: Invalid retry 'yes': use true, false or a mapping with duration and on_events",
        ),
        (
            task("retry: true\nretry_policy:\n  limit: 3h\n"),
            "3:1: Give either retry or retry_policy, not both (retry_policy is the older spelling of retry)",
        ),
        (
            task("retry_policy:\n  retry: yes\n"),
            "3:10: Expected true or false for 'retry_policy.retry', got 'yes'",
        ),
        (task("resources: 4\n"), "2:12: Expected a mapping for 'resources', got 4"),
    ],
)
def test_invalid_configurations(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(f"{FILENAME}:{expected}"), message


def test_minimal_task_has_empty_defaults() -> None:
    configuration = parse("type: task\ncommands: [python train.py]\n")
    assert configuration.model_dump(exclude={"commands"}) == {
        "type": "task",
        "name": None,
        "python": None,
        "image": None,
        "env": {},
        "build": [],
        "ports": [],
        "working_dir": None,
        "resources": None,
        "backends": None,
        "regions": None,
        "spot_policy": None,
        "max_price": None,
        "max_duration": None,
        "retry": None,
        "retry_policy": None,
        # Today's dstack's fields: unset (None) or empty unless the file gives them.
        "setup": [],
        "entrypoint": None,
        "user": None,
        "shell": None,
        "privileged": None,
        "docker": None,
        "nvcc": None,
        "registry_auth": None,
        "home_dir": None,
        "single_branch": None,
        "priority": None,
        "dstack": None,
        "volumes": [],
        "files": [],
        "repos": [],
        "nodes": None,
        "groups": None,
        "stop_duration": None,
        "utilization_policy": None,
        "schedule": None,
        "fleets": None,
        "instances": None,
        "startup_order": None,
        "stop_criteria": None,
        "availability_zones": None,
        "instance_types": None,
        "reservation": None,
        "idle_duration": None,
        "creation_policy": None,
        "tags": None,
        "backend_options": None,
    }


@pytest.mark.parametrize(
    ("written", "version"), [("3.10", "3.10"), ("3.9", "3.9"), ("'3.12'", "3.12"), ("3.14", "3.14")]
)
def test_python_version_keeps_the_text_as_written(written: str, version: str) -> None:
    assert parse(task(f"python: {written}\n")).python == version


def test_image_without_commands_is_allowed() -> None:
    configuration = parse("type: task\nimage: ghcr.io/org/app:1\n")
    assert configuration.commands == [] and configuration.image == "ghcr.io/org/app:1"


def test_all_fields_together() -> None:
    configuration = parse(
        """\
        type: task
        name: train-llama
        python: 3.10
        env:
          - HF_TOKEN
          - MODE=fast=really
        build:
          - pip install -r requirements.txt
        commands:
          - python train.py ${{ run.args }}
        ports:
          - 7860
          - "3000:8000"
          - "*:9000"
          - {local_port: 8080, container_port: 80}
        working_dir: ./src/app/
        resources:
          gpu: A100:80GB:2
          memory: 16GB..
        backends: [local]
        regions: [home]
        spot_policy: auto
        max_price: 1.5
        max_duration: 1h30m
        retry:
          duration: 3h
          on_events: [no-capacity]
        """
    )
    assert configuration.name == "train-llama"
    assert configuration.python == "3.10"
    assert configuration.env == {"HF_TOKEN": None, "MODE": "fast=really"}
    assert configuration.ports == [
        PortMapping(local_port=7860, container_port=7860),
        PortMapping(local_port=3000, container_port=8000),
        PortMapping(local_port=None, container_port=9000),
        PortMapping(local_port=8080, container_port=80),
    ]
    assert configuration.working_dir == "src/app"
    assert configuration.spot_policy is SpotPolicy.AUTO
    assert configuration.max_price == 1.5
    assert configuration.max_duration == 5400
    assert configuration.retry == Retry(duration=10800, on_events=[RetryEvent.NO_CAPACITY])
    assert configuration.resources is not None and str(configuration.resources.gpu) == "A100:80GB:2"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("off", "off"),
        ("false", "off"),
        ("true", None),
        ("90", 90),
        ("'90'", 90),
        ("72h", 259200),
        ("2 h", 7200),
    ],
)
def test_max_duration_forms(written: str, expected: int | str | None) -> None:
    assert parse(task(f"max_duration: {written}\n")).max_duration == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("retry: true", Retry()),
        ("retry: false", False),
        ("retry:\n  duration: 2h", Retry(duration=7200)),
        ("retry_policy:\n  retry: true", Retry(duration=3600)),  # not "forever" as in dstack 0.12
        ("retry_policy:\n  limit: 3h", Retry(duration=10800)),  # a limit implies retrying
        ("retry_policy:\n  retry: false", False),
    ],
)
def test_retry_forms(written: str, expected: Retry | bool) -> None:
    assert parse(task(written + "\n")).retry == expected


def test_retry_true_means_every_event_for_an_hour() -> None:
    retry = Retry()
    assert retry.on_events == [RetryEvent.NO_CAPACITY, RetryEvent.INTERRUPTION, RetryEvent.ERROR]
    assert retry.duration == 3600


def test_ports_duplicate_container_port_points_at_the_second() -> None:
    text = task("ports:\n  - 8000\n  - '9000:8000'\n")
    assert error_of(text) == f"{FILENAME}:4:5: Port 8000 is mapped twice in ports; map each task port once"


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("0", "3:5: Invalid port mapping 0: port 0 is out of range"),
        ("65536", "3:5: Invalid port mapping 65536: port 65536 is out of range"),
        ("a:80", "3:5: Invalid port mapping 'a:80': use N, L:N or *:N with ports from 1 to 65535"),
        ("'80:'", "3:5: Invalid port mapping '80:': use N, L:N or *:N"),
        ("{local_port: 80}", "3:5: Missing required key 'container_port' in 'ports[0]'"),
    ],
)
def test_bad_ports(port: str, expected: str) -> None:
    assert error_of(task(f"ports:\n  - {port}\n")).startswith(f"{FILENAME}:{expected}")


def test_port_65535_is_the_highest() -> None:
    assert parse(task("ports: [65535]\n")).ports == [PortMapping(local_port=65535, container_port=65535)]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("env:\n  - A=1\n  - B=\n  - C", {"A": "1", "B": "", "C": None}),
        ("env:\n  A: 1\n  B: 3.10\n  C: true\n  D:", {"A": "1", "B": "3.10", "C": "true", "D": None}),
        ("env: []", {}),
    ],
)
def test_env_forms(env: str, expected: dict[str, str | None]) -> None:
    assert parse(task(env + "\n")).env == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("env:\n  - A=1\n  - A=2", "4:5: Env variable A is given twice; keep one of them"),
        ("env:\n  - 1A=x", "3:5: Invalid env variable name '1A'; names use letters, digits and '_'"),
        ("env:\n  MY-VAR: x", "3:3: Invalid env variable name 'MY-VAR'"),
        ("env:\n  - A: b", "3:5: Env entry 1 must be KEY=VALUE or KEY; quote it if it contains ': '"),
        ("env:\n  A: [1]", "3:3: The value of env variable A must be a string, not a list or a mapping"),
        ("env: A=1", "2:6: Expected a mapping for 'env', got 'A=1'"),
    ],
)
def test_bad_env(env: str, expected: str) -> None:
    assert error_of(task(env + "\n")).startswith(f"{FILENAME}:{expected}")


def test_programmatic_construction_has_no_locations() -> None:
    configuration = TaskConfiguration(type="task", commands=["a"])
    assert configuration.location_of("commands", 0) is None


def test_loaded_configuration_knows_where_its_commands_are() -> None:
    configuration = parse("type: task\ncommands:\n  - a\n  - b\n")
    location = configuration.location_of("commands", 1)
    assert location is not None and (location.file, location.line, location.column) == (FILENAME, 4, 5)


def test_a_dumped_configuration_validates_back_to_itself() -> None:
    configuration = parse(
        task(
            "python: 3.10\nenv: [A, B=2]\nports: [8000, '*:9000']\nmax_duration: off\n"
            "retry_policy: {limit: 2h}\nresources:\n  gpu: nvidia:A100,H100:40GB..:2\n  cpu: arm:4..\n"
            "  memory: 512MB..\n  shm_size: 1GB\n"
        )
    )
    assert TaskConfiguration.model_validate_json(configuration.model_dump_json()) == configuration
    assert TaskConfiguration.model_validate(configuration.model_dump()) == configuration
