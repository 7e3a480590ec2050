"""dstack run (and dstack apply): plan, confirm, upload the code, submit, then stream the task's output."""

from __future__ import annotations

import argparse

from dstack.cli.requirements import add_requirement_args


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workdir",
        nargs="?",
        default=None,
        metavar="WORKDIR",
        help="the working directory (default: the current one)",
    )
    parser.add_argument("-f", "--file", help="the configuration file (default: WORKDIR/.dstack.yml)")
    parser.add_argument("-n", "--name", help="the run's name (default: a random one)")
    parser.add_argument("-d", "--detach", action="store_true", help="submit and return at once")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "-p",
        "--port",
        action="append",
        default=[],
        metavar="L:N",
        help="forward task port N to local port L; *:N picks a free one (repeatable)",
    )
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable; a bare KEY takes it from your environment",
    )
    parser.add_argument("--project", help="the project (default: the configured default)")
    resources = parser.add_argument_group("resources and profile")
    add_requirement_args(resources)
    resources.add_argument("--profile", help="a profile from .dstack/profiles.yml")
    resources.add_argument(
        "--max-duration", metavar="DURATION", help="stop the task after this long (e.g. 2h, off)"
    )
    spot = resources.add_mutually_exclusive_group()
    spot.add_argument(
        "--spot", dest="spot_policy", action="store_const", const="spot", help="spot capacity only"
    )
    spot.add_argument(
        "--on-demand", dest="spot_policy", action="store_const", const="on-demand", help="on-demand only"
    )
    spot.add_argument(
        "--spot-auto",
        dest="spot_policy",
        action="store_const",
        const="auto",
        help="spot if there is, else on-demand",
    )
    retry = resources.add_mutually_exclusive_group()
    retry.add_argument(
        "--retry",
        dest="retry",
        action="store_const",
        const=True,
        help="wait for capacity (for an hour unless --retry-limit says otherwise)",
    )
    retry.add_argument(
        "--no-retry",
        dest="retry",
        action="store_const",
        const=False,
        help="fail at once if no capacity is free",
    )
    retry.add_argument("--retry-limit", metavar="DURATION", help="wait for capacity up to this long, e.g. 3h")
    build = parser.add_mutually_exclusive_group()
    build.add_argument(
        "--build",
        dest="build_policy",
        action="store_const",
        const="build",
        help="run the configuration's build commands if their result is not cached",
    )
    build.add_argument(
        "--force-build",
        dest="build_policy",
        action="store_const",
        const="force-build",
        help="run the build commands even if their result is cached",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="send every change of a local file to the running task (for apps that reload)",
    )
    # The task's own arguments are whatever argparse does not know (see cli/main.py), so argparse cannot
    # list them itself: add them to the usage line and explain them in a section of their own.
    parser.add_argument_group(
        "task arguments",
        "ARGS: every argument dstack run does not know itself, and everything after --, goes to the task "
        "as ${{ run.args }}, each one a separate argument, e.g. "
        "dstack run . -f train.dstack.yml --epochs 3 -- --lr 0.1",
    )
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + " [ARGS ...] [-- ARGS ...]"


def execute(args: argparse.Namespace) -> int:
    from dstack.cli.run_flow import run

    return run(args)
