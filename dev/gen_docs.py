"""The generated parts of docs/: field tables from the configuration models, option tables from the CLI's
argparse parsers. The prose around them is written by hand; the parts between the BEGIN/END markers are
this script's, so a field or a flag added to the code shows up in the docs (and tests/unit/test_docs.py
fails until they are regenerated, and until every field has a description).

    .venv/bin/python dev/gen_docs.py           # rewrite the generated parts of docs/*.md
    .venv/bin/python dev/gen_docs.py --check   # exit 1 and say what differs (what the test does)

A field's description is its pydantic `description`, else its entry in FIELD_NOTES below.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BEGIN = "<!-- BEGIN GENERATED: {name} (dev/gen_docs.py) -->"
END = "<!-- END GENERATED: {name} -->"

# Descriptions of fields whose models carry none: "Block.field" (Block: the model's class name).
FIELD_NOTES = {
    "TaskConfiguration.type": "Always `task` (a `fleet` file is read by `dstack apply`; other types are "
    "refused with a clear error).",
    "TaskConfiguration.name": "The run's name: 2 to 41 lowercase letters, digits and `-`, starting with a "
    "letter. Default: a random readable name (`-n` overrides).",
    "TaskConfiguration.python": 'The Python version of the task\'s own virtual environment, e.g. `"3.11"` '
    "(unquoted `3.10` means 3.10). Default: the CLI's own version. Excludes `image`.",
    "TaskConfiguration.image": "A Docker image to run the commands in (host network, the code at "
    "/workflow). Excludes `python`.",
    "TaskConfiguration.env": "Environment variables: `KEY=VALUE` list entries or a mapping; a bare `KEY` "
    "takes its value from the CLI's environment. `-e` overrides.",
    "TaskConfiguration.build": "Commands that prepare the environment once; their result is cached per "
    "content of what defines it and reused (`--build` runs them when not cached).",
    "TaskConfiguration.commands": "The commands, run in order in one bash shell in the working directory; "
    "the first failing one fails the task with its exit code.",
    "TaskConfiguration.ports": "Ports the task listens on, forwarded to 127.0.0.1 while attached: `N`, "
    '`"L:N"`, `"*:N"` or a mapping. `-p` adds or overrides.',
    "TaskConfiguration.working_dir": "The working directory, relative to the code root. Default: the "
    "WORKDIR of `dstack run` relative to it.",
    "ProfileParams.resources": "What the task needs (see the resources block).",
    "ProfileParams.backends": "Only these backends may run it.",
    "ProfileParams.regions": "Only these regions may run it.",
    "ProfileParams.spot_policy": "`spot`, `on-demand` or `auto`.",
    "ProfileParams.max_price": "The most to pay, in USD per hour (above 0).",
    "ProfileParams.max_duration": "Stop the task after this long (`30m`, `72h`, `1h30m`), or `off`.",
    "ProfileParams.retry": "Wait for capacity: `true` (for 1h), or a retry block.",
    "ProfileParams.retry_policy": "The 2023 spelling of retry: `{retry: true, limit: 3h}`.",
    "Profile.name": "The profile's name, chosen with `--profile NAME`.",
    "Profile.default": "Use this profile when no `--profile` is given.",
    "ProfilesFile.profiles": "The profiles.",
    "ResourcesSpec.cpu": "CPUs: a count or a range (`4`, `2..8`, `4..`), optionally `x86:`/`arm:`. "
    "Default `2..`; set, it is reserved and capped. At least 1.",
    "ResourcesSpec.memory": "Memory: a size or a range (`16GB`, `8GB..`); a bare number is GB. "
    "Default `8GB..`; set, it is reserved and capped. Not 0.",
    "ResourcesSpec.disk": "Free disk space the host must have.",
    "ResourcesSpec.shm_size": "Shared memory (`/dev/shm`) of a container.",
    "ResourcesSpec.gpu": "GPUs: order-free `:`-separated names, memory, count and vendor, e.g. "
    "`A100:80GB:2`, `24GB..:2`, `H100`; `0` asks for none.",
    "CPUSpec.arch": "`x86` or `arm`.",
    "CPUSpec.count": "How many CPUs (a count or a range).",
    "GPUSpec.vendor": "`nvidia` or `amd`.",
    "GPUSpec.name": "Catalog names, any of which will do (`A100`, `A10,A10G`).",
    "GPUSpec.memory": "Memory per GPU (a size or a range).",
    "GPUSpec.count": "How many GPUs (default `1..`).",
    "Range.min": "The least (inclusive); unset: no lower bound.",
    "Range.max": "The most (inclusive); unset: no upper bound.",
    "PortMapping.local_port": "The port on 127.0.0.1 of the user's machine; unset: any free one.",
    "PortMapping.container_port": "The port the task listens on.",
    "Retry.on_events": "The events to retry on: `no-capacity`, `interruption`, `error`.",
    "Retry.duration": "For how long from the run's submission (`3h`).",
    "RetryPolicy.retry": "Retry at all.",
    "RetryPolicy.limit": "For how long.",
    "ServerConfig.backends": "Where tasks run (one entry per backend type).",
    "ServerConfig.retention": "How long finished runs and their output are kept.",
    "LocalBackendConfig.type": "`local`: this machine, tasks as processes (or containers for `image`).",
    "LocalBackendConfig.price": "USD per hour shown in plans.",
    "LocalBackendConfig.resources": "What the host has, declared (replaces what the agent detects); "
    "see the declared resources block.",
    "DeclaredResources.cpus": "CPUs.",
    "DeclaredResources.memory": "Memory (`64GB`).",
    "DeclaredResources.disk": "Free disk (`500GB`).",
    "DeclaredResources.arch": "`x86_64` or `aarch64`.",
    "DeclaredResources.gpus": "GPUs: `NAME:MEMORY:COUNT` (`H100:80GB:2`) or a list of GPU blocks.",
    "DeclaredGpu.name": "The GPU's catalog name (`H100`).",
    "DeclaredGpu.memory": "Its memory (`80GB`).",
    "DeclaredGpu.vendor": "`nvidia` or `amd`.",
    "RetentionConfig.max_age": "Finished runs finished longer ago than this are deleted with their output "
    "(`30d`; `off`: never).",
    "RetentionConfig.max_size": "While all finished runs' output together is bigger, the oldest runs go "
    "(`20GB`; `off`: no cap). A run that ended in the last 10 minutes is kept.",
    "RetentionConfig.run_output_limit": "A run that prints more ends with `log quota exceeded`; what it "
    "printed up to the limit is kept (`4GB`; `off`: no limit).",
    "ProfileParams.stop_duration": "How long a stopped task may take to exit after SIGTERM before it is "
    "killed (`30s`; `off`: no limit).",
    "ProfileParams.utilization_policy": "Stop the task if any of its GPUs stays below a utilization for a "
    "whole time window (see its block).",
    "ProfileParams.schedule": "Start the run at these times (cron, UTC), over and over (see its block).",
    "ProfileParams.fleets": "Only hosts of these fleets may run it.",
    "ProfileParams.instances": "Only these hosts may run it (by name, or fleet and index).",
    "ProfileParams.startup_order": "Multi-node: `any`, `master-first` or `workers-first`.",
    "ProfileParams.stop_criteria": "Multi-node: the run ends when `all-done` or when the `master-done`.",
    "ProfileParams.availability_zones": "Cloud only (the plan says so): availability zones.",
    "ProfileParams.instance_types": "Cloud only (the plan says so): instance types.",
    "ProfileParams.reservation": "Cloud only (the plan says so): a capacity reservation.",
    "ProfileParams.idle_duration": "Cloud only (the plan says so): how long an idle instance is kept.",
    "ProfileParams.creation_policy": "Cloud only (the plan says so): reuse instances or create new ones.",
    "ProfileParams.tags": "Cloud only (the plan says so): tags of created resources.",
    "ProfileParams.backend_options": "Cloud only (the plan says so): options per backend.",
    "TaskConfiguration.setup": "Deprecated: commands that run before `commands`, as in 0.11.",
    "TaskConfiguration.entrypoint": "Run this instead of a shell; the commands become its arguments (one "
    "argv item each, values interpolated as text: no shell reads them).",
    "TaskConfiguration.user": "The container's user, `name[:group]`.",
    "TaskConfiguration.shell": "The shell the commands run in: `bash` (default), `sh` or an absolute path.",
    "TaskConfiguration.privileged": "Run the container privileged.",
    "TaskConfiguration.docker": "Docker in the task (excludes `image`, `python` and `nvcc`).",
    "TaskConfiguration.nvcc": "The CUDA compiler on PATH.",
    "TaskConfiguration.registry_auth": "Credentials for pulling a private image (may use `${{ env.X }}` and "
    "`${{ secrets.X }}`).",
    "TaskConfiguration.home_dir": "Deprecated; has no effect.",
    "TaskConfiguration.single_branch": "Clone only the repo's branch (default true).",
    "TaskConfiguration.priority": "0-100: a higher one is placed first when capacity is short (default 0).",
    "TaskConfiguration.dstack": "Give the task the server's URL, the project and a token for this run.",
    "TaskConfiguration.volumes": "Host folders mounted into the task: `/host/path:/path`, or a mapping; "
    "may use `${{ dstack.job_num }}` and `${{ dstack.node_rank }}`.",
    "TaskConfiguration.files": "Local files or folders placed in the task: `local[:path]`, or a mapping.",
    "TaskConfiguration.repos": "At most one repo as the task's code: a `local_path` (packed instead of the "
    "code root) or a `url` (cloned on the host).",
    "TaskConfiguration.nodes": "How many nodes the task runs on (multi-node; at least 1).",
    "TaskConfiguration.groups": "Node groups of their own size, resources, commands and ports (excludes "
    "`nodes`).",
    "UtilizationPolicy.min_gpu_utilization": "The least GPU utilization, 0-100 percent.",
    "UtilizationPolicy.time_window": "How long it may stay below (at least `5m`).",
    "Schedule.cron": "A cron expression or a list of them, in UTC.",
    "InstanceRef.fleet": "The fleet's name.",
    "InstanceRef.index": "The host's index in the fleet.",
    "RegistryAuth.username": "The registry's user name.",
    "RegistryAuth.password": "The registry's password or token.",
    "InstanceMount.instance_path": "The folder on the host.",
    "InstanceMount.path": "Where the task sees it.",
    "InstanceMount.optional": "Mount it only if the host has it.",
    "FileMapping.local_path": "The file or folder on the user's machine (relative to the configuration).",
    "FileMapping.path": "Where the task sees it (relative to its working directory, absolute or `~/...`).",
    "RepoSpec.local_path": "A git folder on the user's machine, packed as the task's code.",
    "RepoSpec.url": "A git URL the host clones.",
    "RepoSpec.branch": "The branch to clone.",
    "RepoSpec.hash": "The commit to check out.",
    "RepoSpec.path": "Where the repo goes in the task's code folder (default `.`).",
    "RepoSpec.if_exists": "`error` or `skip` when that folder is not empty.",
    "NodeGroup.name": "The group's name.",
    "NodeGroup.nodes": "How many nodes it has.",
    "NodeGroup.resources": "What each of its nodes needs.",
    "NodeGroup.commands": "The commands its nodes run (default: the task's).",
    "NodeGroup.ports": "The ports its nodes listen on.",
    "SlurmBackendConfig.type": "`slurm`: a Slurm cluster reached through its login node over SSH.",
    "SlurmBackendConfig.clusters": "The clusters (see the Slurm cluster block).",
    "SlurmClusterConfig.name": "The cluster's name, shown as the offers' REGION.",
    "SlurmClusterConfig.hostname": "The login node.",
    "SlurmClusterConfig.port": "Its SSH port.",
    "SlurmClusterConfig.user": "The user to log in as.",
    "SlurmClusterConfig.identity_file": "The private key to log in with.",
    "SlurmClusterConfig.cpu_partitions": "The partitions offered for tasks without GPUs (default: every "
    "partition not under gpu_partitions).",
    "SlurmClusterConfig.gpu_partitions": "What the GPUs of some partitions are (Slurm's GRES counts them "
    "but does not name them).",
    "SlurmClusterConfig.container_runtime": "`docker`: image tasks run on the nodes with Docker.",
    "SSHBackendConfig.type": "`ssh`: fleets of your own hosts (always on; see backends.md).",
    "FleetConfiguration.type": "Always `fleet`.",
    "FleetConfiguration.name": "The fleet's name: 2 to 41 lowercase letters, digits and `-`, starting with a "
    "letter. Default: the file's name.",
    "FleetConfiguration.placement": "`cluster`: the hosts share a network for multi-node tasks; `any`: they "
    "need not.",
    "FleetConfiguration.ssh_config": "How to reach the hosts: the defaults of every host, and the hosts.",
    "_Endpoint.user": "The SSH user (default `root`).",
    "_Endpoint.port": "The SSH port (default 22).",
    "_Endpoint.identity_file": "The private key to log in with, e.g. `~/.ssh/id_ed25519` (relative paths are "
    "relative to the file); the CLI sends it to the server.",
    "SSHConfig.proxy_jump": "A host to jump through (`ssh -J`) to reach every host.",
    "SSHConfig.hosts": "The hosts: an address, or a block with its own settings.",
    "ProxyJump.hostname": "The host's name or IP address.",
    "HostSpec.proxy_jump": "A host to jump through to reach this one (instead of ssh_config's).",
    "HostSpec.internal_ip": "The address the fleet's other hosts reach this one at (multi-node tasks).",
    "SlurmGpuPartitions.gpu": "`NAME:MEMORY`, e.g. `A100:80GB`.",
    "SlurmGpuPartitions.partitions": "The partitions whose nodes have them.",
}


# -- configuration models ----------------------------------------------------------------------------------


def _blocks(root: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model its fields hold, in the order they are met."""
    found: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        generic = _generic_origin(model)
        if generic in found or model in found:
            return
        found.append(generic)
        for field in generic.model_fields.values():
            for inner in _models_in(field.annotation):
                visit(inner)

    visit(root)
    return found


def _generic_origin(model: type[BaseModel]) -> type[BaseModel]:
    origin = (
        model.__pydantic_generic_metadata__.get("origin")
        if hasattr(model, "__pydantic_generic_metadata__")
        else None
    )
    return origin or model


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _owner(model: type[BaseModel], name: str) -> str:
    """The class that declares the field (its notes are kept under that name)."""
    for klass in model.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return _generic_origin(klass).__name__
    return model.__name__


# Titles of blocks whose models have no `block_name` (the server's config.yml).
_TITLES = {
    "ServerConfig": "config.yml",
    "LocalBackendConfig": "backend: local",
    "RetentionConfig": "retention",
    "DeclaredResources": "declared resources",
    "DeclaredGpu": "declared GPU",
    "SSHBackendConfig": "backend: ssh",
    "SlurmBackendConfig": "backend: slurm",
    "SlurmClusterConfig": "Slurm cluster",
    "SlurmGpuPartitions": "Slurm GPU partitions",
}


def _block_title(model: type[BaseModel]) -> str:
    return str(getattr(model, "block_name", None) or _TITLES.get(model.__name__, model.__name__))


def _literal(value: Any) -> str:
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _def_title(name: str) -> str:
    """How the tables call a block: its `block_name`."""
    if name.startswith("Range_"):
        return "memory range" if "Memory" in name else "range"
    for model in _ALL_BLOCKS:
        if model.__name__ == name:
            return f"{_block_title(model)} block"
    return name


def _schema_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if "enum" in target:
            return " \\| ".join(_literal(v) for v in target["enum"])
        return _def_title(name)
    if "enum" in schema:
        return " \\| ".join(_literal(v) for v in schema["enum"])
    if "const" in schema:
        return _literal(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts: list[str] = []
            for option in schema[key]:
                text = _schema_type(option, defs)
                if text not in parts:
                    parts.append(text)
            return " \\| ".join(parts)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}), defs)}"
    if kind == "object":
        return "mapping"
    return str(kind or "any")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "-"
    if isinstance(value, BaseModel):
        return "see below" if value.model_dump(exclude_defaults=True) == {} else f"`{value}`"
    if isinstance(value, list) and not value:
        return "`[]`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(getattr(item, "value", item)) for item in value) + "]`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    text = getattr(value, "value", value)
    return f"`{str(text).lower() if isinstance(text, bool) else text}`"


def _object_schema(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The part of a model's schema that lists its keys (models that also take a shorthand wrap it)."""
    if "properties" in schema:
        return schema
    if "$ref" in schema:
        return _object_schema(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        found = _object_schema(option, defs)
        if found:
            return found
    return {}


_ALL_BLOCKS: list[type[BaseModel]] = []


def field_table(model: type[BaseModel], missing: list[str]) -> str:
    schema = model.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    properties = _object_schema(schema, defs).get("properties", {})
    rows = ["| key | takes | default | what it does |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        note = field.description or FIELD_NOTES.get(f"{_owner(model, name)}.{name}")
        if note is None:
            missing.append(f"{_owner(model, name)}.{name}")
            note = "**(undocumented)**"
        takes = _schema_type(properties.get(key, {}), defs) if key in properties else "see its block"
        rows.append(f"| `{key}` | {takes} | {_default(field)} | {note} |")
    return "\n".join(rows)


def model_reference(root: type[BaseModel], missing: list[str]) -> str:
    parts = []
    blocks = _blocks(root)
    _ALL_BLOCKS[:] = blocks
    for model in blocks:
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        parts.append(
            f"#### {_block_title(model)}\n\n{doc}\n\n{field_table(model, missing)}".replace("\n\n\n", "\n\n")
        )
    return "\n\n".join(parts)


# -- the CLI ------------------------------------------------------------------------------------------------


def cli_reference(missing: list[str]) -> str:
    from dstack.cli.main import COMMANDS, build_parser

    _, commands = build_parser()
    parts = []
    for name, (_module, summary) in COMMANDS.items():
        parser = commands[name]
        usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
        rows = ["| argument | what it does |", "|---|---|"]
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # `dstack secret set|list|delete`
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"dstack {name} {choice.dest}")
                    rows.append(f"| `{choice.dest}` | {choice.help or '**(undocumented)**'} |")
                continue
            if action.option_strings:
                spelled = ", ".join(action.option_strings)
                if action.nargs != 0 and action.metavar:
                    spelled += f" {action.metavar}"
                elif action.nargs != 0 and not isinstance(action.const, (bool, str)) and action.dest:
                    spelled += f" {action.dest.upper()}"
            else:
                spelled = str(action.metavar or action.dest)
            if not action.help:
                missing.append(f"dstack {name} {spelled}")
            helptext = (action.help or "**(undocumented)**").replace("%(default)s", str(action.default))
            helptext = helptext.replace("|", "\\|")
            rows.append(f"| `{spelled}` | {helptext} |")
        for group in parser._action_groups:
            if group.title == "task arguments" and group.description:
                rows.append(f"| `[ARGS ...] [-- ARGS ...]` | {group.description} |")
        parts.append(f"### dstack {name}\n\n{summary}.\n\n```\n{usage}\n```\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


# -- the files ----------------------------------------------------------------------------------------------


def sections(missing: list[str]) -> dict[str, tuple[str, Callable[[], str]]]:
    from dstack.config import kinds
    from dstack.config.profiles import ProfilesFile
    from dstack.server.config_file import DeclaredResources, ServerConfig

    def server() -> str:
        return model_reference(ServerConfig, missing) + "\n\n" + model_reference(DeclaredResources, missing)

    def kind(name: str) -> Callable[[], str]:
        return lambda: model_reference(kinds.model_for(name), missing)

    # Every `type:` registered in config/kinds.py has a section of its own (a new type fails the check
    # until configuration.md has its BEGIN/END lines).
    return {
        **{name: ("configuration.md", kind(name)) for name in kinds.registered()},
        "profiles": ("configuration.md", lambda: model_reference(ProfilesFile, missing)),
        "cli": ("cli.md", lambda: cli_reference(missing)),
        "server-config": ("server.md", server),
    }


def render(missing: list[str]) -> dict[Path, str]:
    """Each docs file as it should be: its generated parts replaced."""
    texts: dict[Path, str] = {}
    for name, (file_name, produce) in sections(missing).items():
        path = DOCS / file_name
        text = texts.get(path) or path.read_text(encoding="utf-8")
        begin, end = BEGIN.format(name=name), END.format(name=name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path} has no generated section {name!r}: add the lines\n{begin}\n{end}")
        generated = f"{begin}\n\n{produce()}\n\n{end}"
        start, stop = pattern.search(text).span()  # type: ignore[union-attr]
        text = text[:start] + generated + text[stop:]
        texts[path] = text
    return texts


def check() -> list[str]:
    """What is out of date: files whose generated parts differ, and fields without a description."""
    missing: list[str] = []
    problems = [
        f"{path.relative_to(ROOT)} is out of date"
        for path, text in render(missing).items()
        if path.read_text(encoding="utf-8") != text
    ]
    hint = "a field: add one to the model or to FIELD_NOTES; a flag: its help"
    problems += [f"{name} has no description ({hint})" for name in dict.fromkeys(missing)]
    return problems


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    if "--check" in sys.argv[1:]:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("regenerate with: .venv/bin/python dev/gen_docs.py", file=sys.stderr)
        return 1 if problems else 0
    missing: list[str] = []
    for path, text in render(missing).items():
        path.write_text(text, encoding="utf-8")
    for name in dict.fromkeys(missing):
        print(
            f"{name} has no description (a field: in the model or FIELD_NOTES; a flag: its help)",
            file=sys.stderr,
        )
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
