"""Today's dstack's task fields (reference §10.2, §11): each valid form's parsed value, each invalid form's
exact message at its file:line:column."""

from __future__ import annotations

import pytest
from config_testkit import FILENAME, error_of, parse, task

from dstack.config import TaskConfiguration
from dstack.config.mounts import FileMapping, InstanceMount, RepoSpec
from dstack.config.policies import InstanceRef, Schedule, UtilizationPolicy

PROCESS = "a task without image runs as processes on the host, outside any container"
PRODUCT_RUNS = "this product runs type: task (dstack run or dstack apply) and type: fleet (dstack apply)"
IMAGE = "image: ghcr.io/org/app:1\n"


def image_task(extra: str, commands: str = "commands: [python train.py]\n") -> str:
    return task(IMAGE + extra, commands)


# -- valid forms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "expected"),
    [
        ("['/mnt/data:/data']", [InstanceMount(instance_path="/mnt/data", path="/data")]),
        ("['/mnt/data/:/data/']", [InstanceMount(instance_path="/mnt/data", path="/data")]),
        (
            "[{instance_path: /mnt/x, path: /x, optional: true}]",
            [InstanceMount(instance_path="/mnt/x", path="/x", optional=True)],
        ),
        (
            "['/mnt/ckpt-${{ dstack.node_rank }}:/ckpt', '/mnt/j${{ dstack.job_num }}:/j']",
            [
                InstanceMount(instance_path="/mnt/ckpt-${{ dstack.node_rank }}", path="/ckpt"),
                InstanceMount(instance_path="/mnt/j${{ dstack.job_num }}", path="/j"),
            ],
        ),
        ("", []),
    ],
)
def test_volume_forms(volumes: str, expected: list[InstanceMount]) -> None:
    assert parse(task(f"volumes: {volumes}\n" if volumes else "volumes:\n")).volumes == expected


@pytest.mark.parametrize(
    ("entry", "local", "target"),
    [
        ("data", "data", "data"),
        ("data:input", "data", "input"),
        ("./cfg/a.yml:conf/a.yml", "./cfg/a.yml", "conf/a.yml"),
        ("../examples", "../examples", "examples"),
        (".", ".", "."),
        ("{local_path: weights, path: models/w}", "weights", "models/w"),
    ],
)
def test_file_forms_for_a_process_task(entry: str, local: str, target: str) -> None:
    (mapping,) = parse(task(f"files:\n  - {entry}\n")).files
    assert (mapping.local_path, mapping.target) == (local, target)


@pytest.mark.parametrize(
    ("entry", "target"),
    [
        ("~/.ssh/id_rsa:/root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
        ("~/.cache/huggingface/token", "~/.cache/huggingface/token"),
        ("app.conf:/etc/app/", "/etc/app"),
        ("data:~/data", "~/data"),
        ("/opt/models", "/opt/models"),
    ],
)
def test_file_targets_outside_the_working_directory_need_an_image(entry: str, target: str) -> None:
    (mapping,) = parse(image_task(f"files:\n  - '{entry}'\n")).files
    assert mapping.target == target


@pytest.mark.parametrize(
    ("repos", "expected"),
    [
        ("['.']", RepoSpec(local_path=".")),
        ("['..:sub']", RepoSpec(local_path="..", path="sub")),
        ("['https://github.com/org/repo']", RepoSpec(url="https://github.com/org/repo")),
        ("['https://github.com/org/repo:src']", RepoSpec(url="https://github.com/org/repo", path="src")),
        ("['ssh://git@host:2222/org/repo.git']", RepoSpec(url="ssh://git@host:2222/org/repo.git")),
        ("['git@github.com:org/repo.git']", RepoSpec(url="git@github.com:org/repo.git")),
        ("['git@github.com:org/repo.git:lib']", RepoSpec(url="git@github.com:org/repo.git", path="lib")),
        ("['file:///srv/git/repo']", RepoSpec(url="file:///srv/git/repo")),
        (
            "[{url: 'https://h/r', branch: release/1.2, hash: ABCDEF12, path: lib, if_exists: skip}]",
            RepoSpec(url="https://h/r", branch="release/1.2", hash="abcdef12", path="lib", if_exists="skip"),
        ),
    ],
)
def test_repo_forms(repos: str, expected: RepoSpec) -> None:
    assert parse(task(f"repos: {repos}\n")).repos == [expected]


def test_an_image_task_may_put_its_repo_at_an_absolute_path() -> None:
    assert parse(image_task("repos: ['..:/my-repo']\n")).repos == [RepoSpec(local_path="..", path="/my-repo")]


def test_container_fields_of_an_image_task() -> None:
    configuration = parse(
        image_task(
            "entrypoint: python3 -u -c\nuser: '1000:1000'\nshell: /usr/bin/zsh\nprivileged: true\n"
            "working_dir: /srv/app\nregistry_auth:\n  username: $oauthtoken\n"
            "  password: ${{ secrets.NGC_KEY }}\n"
        )
    )
    assert configuration.entrypoint == "python3 -u -c"
    assert configuration.user == "1000:1000"
    assert configuration.shell == "/usr/bin/zsh"
    assert configuration.privileged is True
    assert configuration.working_dir == "/srv/app"
    assert configuration.registry_auth is not None
    assert (configuration.registry_auth.username, configuration.registry_auth.password) == (
        "$oauthtoken",
        "${{ secrets.NGC_KEY }}",
    )


@pytest.mark.parametrize("shell", ["sh", "bash", "/usr/bin/zsh", "/bin//sh"])
def test_shell_forms(shell: str) -> None:
    assert parse(task(f"shell: {shell}\n")).shell == ("/bin/sh" if shell == "/bin//sh" else shell)


@pytest.mark.parametrize(
    ("written", "expected"), [("'~'", "~"), ("~/work/", "~/work"), ("/a/b/../c", "/a/c")]
)
def test_absolute_working_dir_forms(written: str, expected: str) -> None:
    assert parse(image_task(f"working_dir: {written}\n")).working_dir == expected


def test_setup_home_dir_single_branch_dstack_nvcc() -> None:
    configuration = parse(
        task("setup:\n  - pip install -r req.txt\nhome_dir: /home/me\nsingle_branch: false\ndstack: true\n")
    )
    assert configuration.setup == ["pip install -r req.txt"]
    assert configuration.home_dir == "/home/me"
    assert configuration.single_branch is False
    assert configuration.dstack is True
    assert parse(task("nvcc: true\n")).nvcc is True


@pytest.mark.parametrize("priority", [0, 50, 100])
def test_priority_bounds(priority: int) -> None:
    assert parse(task(f"priority: {priority}\n")).priority == priority


@pytest.mark.parametrize(
    ("schedule", "cron"),
    [
        ("cron: '15 23 * * *'", ["15 23 * * *"]),
        ("cron: ['0 9 * * mon-fri', '30  8 1 jan *']", ["0 9 * * mon-fri", "30 8 1 jan *"]),
        ("cron: '*/10 8-10 * * *'", ["*/10 8-10 * * *"]),
    ],
)
def test_schedule_forms(schedule: str, cron: list[str]) -> None:
    assert parse(task(f"schedule:\n  {schedule}\n")).schedule == Schedule(cron=cron)


@pytest.mark.parametrize(
    ("written", "expected"),
    [("30s", 30), ("5m", 300), ("0", 0), ("off", "off"), ("false", "off"), ("true", None), ("'2 h'", 7200)],
)
def test_stop_duration_forms(written: str, expected: int | str | None) -> None:
    assert parse(task(f"stop_duration: {written}\n")).stop_duration == expected


def test_utilization_policy() -> None:
    policy = parse(
        task("utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 1h\n")
    ).utilization_policy
    assert policy == UtilizationPolicy(min_gpu_utilization=10, time_window=3600)


@pytest.mark.parametrize(
    ("written", "expected"), [("-1", -1), ("off", -1), ("false", -1), ("true", None), ("1h", 3600)]
)
def test_idle_duration_forms(written: str, expected: int | None) -> None:
    # Reference §13: an idle duration of -1 is accepted (it means "keep the instance").
    assert parse(task(f"idle_duration: {written}\n")).idle_duration == expected


def test_placement_and_cloud_only_fields() -> None:
    configuration = parse(
        task(
            "fleets: [my-fleet]\ninstances:\n  - gpu-host-1\n  - {fleet: my-fleet, index: 2}\n"
            "backends: [local, aws, runpod]\nregions: [home]\navailability_zones: [us-east-1a]\n"
            "instance_types: [p4d.24xlarge]\nreservation: cr-123\ncreation_policy: reuse\n"
            "tags:\n  team: ml\n  cost-center: 42\n"
            "backend_options:\n  aws: {ebs: gp3}\n"
            "spot_policy: auto\n"
        )
    )
    assert configuration.fleets == ["my-fleet"]
    assert configuration.instances == ["gpu-host-1", InstanceRef(fleet="my-fleet", index=2)]
    assert configuration.backends == ["local", "aws", "runpod"]
    assert configuration.availability_zones == ["us-east-1a"]
    assert configuration.instance_types == ["p4d.24xlarge"]
    assert configuration.reservation == "cr-123"
    assert configuration.creation_policy == "reuse"
    assert configuration.tags == {"team": "ml", "cost-center": "42"}
    assert configuration.backend_options == [{"type": "aws", "ebs": "gp3"}]


def test_backend_options_as_a_list() -> None:
    text = task("backend_options:\n  - type: aws\n    ebs: gp3\n  - type: gcp\n")
    assert parse(text).backend_options == [{"type": "aws", "ebs": "gp3"}, {"type": "gcp"}]


def test_empty_resources_mapping_means_the_defaults() -> None:
    assert parse(task("resources: {}\n")).resources is not None


# -- multi-node (reference §11, cases 1-7) ------------------------------------------------------------------


def test_nodes_becomes_one_implicit_group() -> None:
    configuration = parse(task("nodes: 2\n"))
    (group,) = configuration.node_groups()
    assert (group.name, group.nodes, group.commands) == ("0", 2, ["python train.py"])
    assert configuration.total_nodes == 2 and configuration.is_multi_node


def test_a_task_without_nodes_is_one_node() -> None:
    configuration = parse(task())
    assert [(g.name, g.nodes) for g in configuration.node_groups()] == [("0", 1)]
    assert not configuration.is_multi_node


def test_groups_are_named_by_position_and_keep_their_fields() -> None:
    configuration = parse(
        "type: task\ngroups:\n  - name: head\n    commands: [echo head]\n    ports: [8265]\n"
        "  - nodes: 3\n    commands: [echo worker]\n    resources:\n      gpu: 1\n"
    )
    groups = configuration.node_groups()
    assert [(g.name, g.nodes, g.commands) for g in groups] == [
        ("head", 1, ["echo head"]),
        ("1", 3, ["echo worker"]),
    ]
    assert groups[0].ports[0].container_port == 8265
    assert groups[1].resources is not None and str(groups[1].resources.gpu) == "1"
    assert configuration.total_nodes == 4


def test_groups_without_commands_run_the_tasks_image() -> None:
    configuration = parse("type: task\nimage: ubuntu\ngroups:\n  - nodes: 2\n")
    assert [(g.name, g.nodes, g.commands) for g in configuration.node_groups()] == [("0", 2, [])]


# -- invalid forms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            task("volumes: [my-vol:/data]\n"),
            "2:11: Invalid volume 'my-vol:/data': 'my-vol' names a network volume, and no backend of this "
            "product offers network volumes; mount a folder of the host with /host/path:/path",
        ),
        (
            task("volumes:\n  - name: my-vol\n    path: /data\n"),
            "3:5: Invalid volume: 'my-vol' names a network volume, and no backend of this product offers "
            "network volumes; mount a folder of the host with /host/path:/path",
        ),
        (
            task("volumes: [/data]\n"),
            "2:11: Invalid volume '/data': mount a folder of the host with /host/path:/path",
        ),
        (
            task("volumes: ['/mnt/a:data']\n"),
            "2:11: Invalid volume path 'data': it must be an absolute path, e.g. /data",
        ),
        (
            task("volumes: ['/:/data']\n"),
            "2:11: Invalid volume instance_path '/': it cannot be the root folder",
        ),
        (
            task("volumes: ['/mnt/${{ run.name }}:/data']\n"),
            "2:11: Invalid volume instance_path '/mnt/${{ run.name }}': unknown variable(s) ${{ run.name }}; "
            "a volume may use dstack.job_num, dstack.node_rank",
        ),
        (
            task("volumes:\n  - instance_path: /mnt\n    path: /data\n    optional: yes\n"),
            "5:15: Expected true or false for 'volumes[0].optional', got 'yes'",
        ),
        (task("files: ['']\n"), "2:9: Invalid file mapping '': use LOCAL or LOCAL:PATH, e.g. data:/data"),
        (
            task("files: ['~bob/x']\n"),
            "2:9: Invalid files local_path '~bob/x': ~user is not supported; use ~/path",
        ),
        (
            task("files: ['a:../x']\n"),
            "2:9: Invalid files path '../x': a relative path must stay inside the working directory",
        ),
        (
            task('files: ["a\\tb:c"]\n'),
            "2:9: Invalid files local_path 'a\tb': it contains a control character (a newline or a tab)",
        ),
        (
            task("files: ['/etc/hosts']\n"),
            f"2:9: Invalid files entry '/etc/hosts': its target /etc/hosts is outside the working directory, "
            f"which needs image ({PROCESS}); give a relative path, e.g. /etc/hosts:hosts",
        ),
        (
            task("files: ['a:~/b']\n"),
            "2:9: Invalid files entry 'a': its target ~/b is outside the working directory, which "
            "needs image "
            f"({PROCESS}); give a relative path, e.g. a:b",
        ),
        (
            task("repos: [., ..]\n"),
            "2:12: At most one repo is supported (as in dstack); keep one entry in repos",
        ),
        (
            task("repos:\n  - local_path: .\n    url: https://x/y\n"),
            "4:5: The keys local_path and url of a repo are mutually exclusive",
        ),
        (task("repos:\n  - branch: main\n"), "3:5: A repo needs local_path or url"),
        (
            task("repos:\n  - url: 'ext::sh -c touch% /tmp/x'\n"),
            "3:10: Invalid repo url 'ext::sh -c touch% /tmp/x': use an https://, ssh://, git:// or "
            "file:// URL, "
            "or user@host:path",
        ),
        (
            task("repos:\n  - url: '-uhttps://h/r'\n"),
            "3:10: Invalid repo url '-uhttps://h/r': use an https://",
        ),
        (
            task("repos:\n  - url: https://h/r\n    hash: xyz\n"),
            "4:11: Invalid repo hash 'xyz': give a commit hash (4 to 64 hex digits)",
        ),
        (
            task("repos:\n  - url: https://h/r\n    branch: -x\n"),
            "4:13: Invalid repo branch '-x': give a branch name such as main or release/1.2",
        ),
        (
            task("repos:\n  - url: https://h/r\n    if_exists: replace\n"),
            "4:16: Invalid value 'replace' for 'repos[0].if_exists'; allowed: error, skip",
        ),
        (
            task("repos: ['https://h/r:/abs']\n"),
            f"2:9: Invalid repo path /abs: a path outside the working directory needs image ({PROCESS}); "
            "give a relative path",
        ),
        (task("registry_auth:\n  username: a\n"), "2:1: Missing required key 'password' in 'registry_auth'"),
        (
            image_task("registry_auth:\n  password: ${{ run.name }}\n"),
            "4:13: Invalid registry_auth.password '${{ run.name }}': unknown variable(s) ${{ run.name }}; "
            "known: env.NAME, secrets.NAME",
        ),
        (
            task('entrypoint: "python -c \'x"\n'),
            "2:13: Invalid entrypoint 'python -c 'x': it cannot be split into words (No closing quotation)",
        ),
        (
            task("entrypoint: '  '\n"),
            "2:13: Invalid entrypoint '  ': it is empty; give the program to run, e.g. python3 -u",
        ),
        (
            image_task("user: 'a b'\n"),
            "3:7: Invalid user 'a b': use a user name or id, optionally with a group, e.g. ubuntu or "
            "1000:1000",
        ),
        (
            task("user: ubuntu\n"),
            f"2:1: The key user needs image: {PROCESS}, as the agent's user; remove user or set image",
        ),
        # Reference §11, case 8.
        (
            task("shell: zsh\n"),
            "2:8: Invalid shell 'zsh': use sh, bash or an absolute path such as /usr/bin/zsh",
        ),
        (task("shell: bin/zsh\n"), "2:8: Invalid shell 'bin/zsh': use sh, bash or an absolute path"),
        (task("privileged: yes\n"), "2:13: Expected true or false for 'privileged', got 'yes'"),
        (
            image_task("docker: true\n"),
            "3:1: The keys docker and image are mutually exclusive; docker: true runs the commands "
            "in dstack's "
            "Docker-in-Docker environment",
        ),
        (task("python: '3.11'\ndocker: true\n"), "3:1: The keys docker and python are mutually exclusive"),
        (task("nvcc: true\ndocker: true\n"), "3:1: The keys docker and nvcc are mutually exclusive"),
        (
            image_task("nvcc: true\n"),
            "3:1: The keys nvcc and image are mutually exclusive; nvcc: true asks for the default "
            "environment "
            "with the CUDA compiler",
        ),
        (
            image_task("working_dir: ~bob/x\n"),
            "3:14: Invalid working_dir '~bob/x': ~user is not supported; use ~/path or an absolute path",
        ),
        (
            task("working_dir: ~/work\n"),
            "2:14: Invalid working_dir '~/work': an absolute working_dir is the container's working "
            "directory "
            f"and needs image ({PROCESS}); give a folder relative to the code root",
        ),
        (
            task("setup: pip install x\n"),
            "2:8: Expected a list of strings for 'setup', got a string; use a YAML list with one '- command' "
            "per line",
        ),
        (task("priority: 101\n"), "2:11: The value of 'priority' must be at most 100, got 101"),
        (task("priority: -1\n"), "2:11: The value of 'priority' must be at least 0, got -1"),
        (task("priority: high\n"), "2:11: Expected a whole number for 'priority', got 'high'"),
        (task("priority: 1.5\n"), "2:11: Expected a whole number for 'priority', got 1.5"),
        (
            task("schedule:\n  cron: '61 * * * *'\n"),
            "3:9: Invalid cron expression '61 * * * *': minute 61 is out of range 0-59",
        ),
        (task("schedule:\n  cron: []\n"), "3:3: The list 'schedule.cron' must not be empty"),
        (
            task("schedule:\n  cron: ['* * *']\n"),
            "3:10: Invalid cron expression '* * *': it has 3 fields; use five fields: minute hour "
            "day-of-month month day-of-week, e.g. '15 23 * * *'",
        ),
        (
            task("schedule:\n  cron: ['0 0 * * 7']\n"),
            "3:10: Invalid cron expression '0 0 * * 7': day of the week 7 is out of range 0-6",
        ),
        (
            task("schedule:\n  cron: ['0 0 31 2 *']\n"),
            "3:10: Invalid cron expression '0 0 31 2 *': no date ever matches it",
        ),
        (
            task("schedule:\n  cron: ['*/0 * * * *']\n"),
            "3:10: Invalid cron expression '*/0 * * * *': the step '0' of the minute field is not a number "
            "from 1 to 9999",
        ),
        (
            task("schedule:\n  cron: ['5-1 * * * *']\n"),
            "3:10: Invalid cron expression '5-1 * * * *': the range 5-1 of the minute field goes backwards",
        ),
        (
            task("schedule:\n  cron: ['0 0 * foo *']\n"),
            "3:10: Invalid cron expression '0 0 * foo *': 'foo' is not a month (1-12 or jan-dec)",
        ),
        (
            task("schedule:\n  cron: ['0 0 * * 99999999999']\n"),
            "3:10: Invalid cron expression '0 0 * * 99999999999': day of the week 99999999999 is out "
            "of range 0-6",
        ),
        (task("schedule: '0 * * * *'\n"), "2:11: Expected a mapping for 'schedule', got '0 * * * *'"),
        (task("stop_duration: -5\n"), "2:16: Invalid duration -5: a duration cannot be negative"),
        (task("stop_duration: soon\n"), "2:16: Invalid duration 'soon': use seconds or a number with a unit"),
        (
            task("utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 1m\n"),
            "4:16: Invalid time_window '1m': the minimum is 5m",
        ),
        (
            task("utilization_policy:\n  min_gpu_utilization: 101\n  time_window: 1h\n"),
            "3:24: The value of 'utilization_policy.min_gpu_utilization' must be at most 100, got 101",
        ),
        (
            task("utilization_policy:\n  time_window: 1h\n"),
            "2:1: Missing required key 'min_gpu_utilization' in 'utilization_policy'",
        ),
        (task("fleets: []\n"), "2:1: The list 'fleets' must not be empty"),
        (
            task("fleets: my-fleet\n"),
            "2:9: Expected a list for 'fleets', got a string; use a YAML list with one '- item' per line",
        ),
        (
            task("instances:\n  - fleet: f\n    index: -1\n"),
            "4:12: The value of 'instances[0].index' must be at least 0, got -1",
        ),
        (task("instances: ['']\n"), "2:13: Invalid instance '': give an instance name or hostname"),
        (task("tags:\n  team: [a]\n"), "3:3: The value of tag team must be a string, not a list"),
        (task("idle_duration: -2\n"), "2:16: Invalid duration -2: a duration cannot be negative"),
        (
            task("creation_policy: always\n"),
            "2:18: Invalid value 'always' for 'creation_policy'; allowed: reuse, reuse-or-create",
        ),
        (task("instance_types: []\n"), "2:1: The list 'instance_types' must not be empty"),
        (task("reservation: [a]\n"), "2:1: Expected a string for 'reservation', got a list"),
        (
            task("backend_options:\n  - type: aws\n  - type: aws\n"),
            "4:5: backend_options has two entries for backend aws; give one per backend",
        ),
        (
            task("backend_options:\n  - foo: 1\n"),
            "3:5: Entry 1 of backend_options must be a mapping with the backend's type",
        ),
        (task("backend_options:\n  aws: 3\n"), "3:8: The options of backend aws must be a mapping"),
        (task("nodes: 0\n"), "2:8: The value of 'nodes' must be at least 1, got 0"),
        # Reference §11, cases 2-7.
        (
            task("nodes: 2\ngroups:\n  - nodes: 1\n    commands: [a]\n", commands=""),
            "3:1: The keys nodes and groups are mutually exclusive; give the node count of each "
            "group in groups",
        ),
        (task("groups: []\n", commands=""), "2:1: The list 'groups' must not be empty"),
        (
            task("groups:\n  - name: '1'\n    commands: [a]\n  - commands: [b]\n", commands=""),
            "5:5: Node group name '1' is used twice; give each group its own name",
        ),
        (
            task("groups:\n  - name: Bad_Name\n    commands: [a]\n", commands=""),
            "3:11: Invalid node group name 'Bad_Name': use 1 to 40 lowercase letters, digits and "
            "'-', starting "
            "with a letter or digit",
        ),
        (
            task("groups:\n  - commands: [a]\n"),
            "4:1: The key commands cannot be used with groups; give each group its own commands",
        ),
        (
            task("ports: [80]\ngroups:\n  - commands: [a]\n", commands=""),
            "2:1: The key ports cannot be used with groups; give each group its own ports",
        ),
        (
            task("entrypoint: python\ngroups:\n  - commands: [a]\n", commands=""),
            "2:1: The key entrypoint cannot be used with groups; give each group its own entrypoint",
        ),
        (
            task("groups:\n  - name: a\n", commands=""),
            "3:5: Node group 'a' has no commands; give it commands (or set image for the task)",
        ),
        (
            task("startup_order: random\n"),
            "2:16: Invalid value 'random' for 'startup_order'; allowed: any, master-first, workers-first",
        ),
        (
            task("stop_criteria: any\n"),
            "2:16: Invalid value 'any' for 'stop_criteria'; allowed: all-done, master-done",
        ),
        (task("home_dir: [x]\n"), "2:1: Expected a string for 'home_dir', got a list"),
        (task("single_branch: 1\n"), "2:16: Expected true or false for 'single_branch', got 1"),
        (task("dstack: yes\n"), "2:9: Expected true or false for 'dstack', got 'yes'"),
        (
            task("resources:\n"),
            "2:1: The key resources is empty; give cpu, memory, disk, shm_size or gpu under it, or remove it",
        ),
        (
            "type: dev-environment\nide: vscode\n",
            "1:7: Configuration type 'dev-environment' is not supported (today's dstack runs it, "
            "this product "
            f"does not); {PRODUCT_RUNS}",
        ),
        ("type: volume\nname: v\n", "1:7: Configuration type 'volume' is not supported"),
        ("type: gateway\nname: g\n", "1:7: Configuration type 'gateway' is not supported"),
        ("type: service\nport: 80\ncommands: [a]\n", "1:7: Configuration type 'service' is not supported"),
        ("type: fleet\nname: f\n", "1:1: Missing 'ssh_config'"),  # a fleet, validated as one
    ],
)
def test_invalid_forms(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(f"{FILENAME}:{expected}"), message


def test_empty_resources_in_a_profile_is_an_error_too(tmp_path: object) -> None:
    from pathlib import Path

    from dstack.config import ConfigError, load_profiles

    path = Path(str(tmp_path)) / "profiles.yml"
    path.write_text("profiles:\n  - name: a\n    resources:\n")
    with pytest.raises(ConfigError) as caught:
        load_profiles([path])
    assert str(caught.value) == (
        f"{path}:3:5: The key resources is empty; give cpu, memory, disk, shm_size or gpu under it, "
        "or remove it"
    )


def test_every_new_field_survives_a_dump_and_a_validation() -> None:
    """The server validates the configuration the CLI dumped: every field must come back the same."""
    configuration = parse(
        image_task(
            "entrypoint: python3 -u\nuser: nobody\nshell: bash\nprivileged: true\nworking_dir: ~/app\n"
            "registry_auth: {username: u, password: '${{ env.P }}'}\nhome_dir: /root\nsingle_branch: true\n"
            "priority: 7\ndstack: true\nsetup: [echo hi]\n"
            "volumes: ['/mnt/d:/d']\nfiles: ['a:/etc/a', 'b']\nrepos: [{url: 'https://h/r', hash: abcd}]\n"
            "nodes: 1\nstop_duration: off\nutilization_policy: {min_gpu_utilization: 5, time_window: 10m}\n"
            "schedule: {cron: '0 3 * * *'}\nfleets: [f]\ninstances: [h, {fleet: f, index: 0}]\n"
            "startup_order: workers-first\nstop_criteria: master-done\navailability_zones: [z]\n"
            "instance_types: [t]\nreservation: r\nidle_duration: 1h\ncreation_policy: reuse-or-create\n"
            "tags: {a: b}\nbackend_options: [{type: aws, x: 1}]\n"
        )
    )
    assert TaskConfiguration.model_validate_json(configuration.model_dump_json()) == configuration
    assert TaskConfiguration.model_validate(configuration.model_dump()) == configuration
    dumped_groups = parse(
        "type: task\ngroups:\n  - commands: [a]\n  - name: w\n    nodes: 2\n    commands: [b]\n"
    ).model_dump()
    assert TaskConfiguration.model_validate(dumped_groups).model_dump() == dumped_groups


def test_a_file_mapping_target_is_computed_from_the_local_path() -> None:
    assert FileMapping(local_path="../../x/y").target == "x/y"
    assert FileMapping(local_path="~/.netrc").target == "~/.netrc"
