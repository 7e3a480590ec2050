"""The `dstack` command: parse arguments, dispatch to one module per command, turn errors into sentences.

Command modules import only argparse at module level; whatever a command needs beyond that is imported
when it runs, so `dstack --help` and `dstack ps` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from dstack import __version__

# argparse looks each of its words up in gettext's catalogs, and gettext does not remember a miss: ~200
# stat calls (~4 ms) per start of `dstack`. Every other word of dstack is English, so argparse's are too.
argparse._ = lambda message: message  # type: ignore[attr-defined]
argparse.ngettext = lambda singular, plural, count: singular if count == 1 else plural  # type: ignore[attr-defined]

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "Run a task (plan, upload the code, stream its output)"),
    "apply": ("apply", "Apply a fleet (dstack apply -f fleet.dstack.yml), or run a task as dstack run does"),
    "fleet": ("fleet", "List your fleets and their hosts; dstack fleet delete NAME removes one"),
    "ps": ("ps", "List runs"),
    "logs": ("logs", "Show a run's output"),
    "attach": ("attach", "Attach to a running task: its output and ports"),
    "stop": ("stop", "Stop a run"),
    "delete": ("delete", "Delete finished runs and their output"),
    "offer": ("offer", "List the offers that fit resource requirements"),
    "server": ("server", "Run the dstack server in the foreground"),
    "ui": ("ui", "Open the web UI in your browser, signed in"),
    "config": ("config", "Point the CLI at a dstack server"),
    "init": ("init", "Check the server and record this repository"),
    "secret": ("secret", "Manage the project's secrets (set, list, delete)"),
    "schema": ("schema", "Print the JSON Schema of *.dstack.yml files (for editors)"),
}
# Commands whose unknown arguments are the task's own (`${{ run.args }}`).
PASSTHROUGH = {"run", "apply"}


class _Formatter(argparse.HelpFormatter):
    """argparse's own, with the width found as shutil.get_terminal_size finds it, without importing shutil
    (argparse makes a formatter for every argument added; shutil brings zlib, bz2 and lzma: ~2 ms)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


def _columns() -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line, with where to find help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        from dstack.core.text import clip_quoted

        sys.stderr.write(f"{self.prog}: {clip_quoted(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser(only: str | None = None) -> tuple[Parser, dict[str, Parser]]:
    """The parser of every command; with `only`, the arguments of that command alone are registered (the
    others are still listed, unregistered: the command line names one, and registering every command's
    arguments, which imports every command's module, is ~10 ms of each `dstack` start)."""
    parser = Parser(
        prog="dstack",
        description="Run AI tasks on your own machine, servers and clusters.",
        allow_abbrev=False,
    )
    # Not argparse's "version" action: that prints and exits 0 however many arguments follow.
    parser.add_argument("-v", "--version", action="store_true", help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands = {}
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary, allow_abbrev=False)
        if only is None or name == only:
            _module(module).register(command)
        commands[name] = command
    return parser, commands


def _module(name: str) -> Any:
    return importlib.import_module(f"dstack.cli.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # this process is the command (not a caller of main)
        _start_warm_process()
        _exit_now_if_nothing_left(code)
    return code


def run_warm(argv: list[str], parsers: dict[str | None, tuple[Parser, dict[str, Parser]]]) -> int:
    """The command, in a copy of the warm process (dstack.cli.warm_server), with its prebuilt parsers."""
    return _main(argv, parsers)


def _start_warm_process() -> None:
    """After a command that found no warm process (dstack.cli.warm_client), start one for the next."""
    from pathlib import Path

    from dstack.cli import warm_client

    path = warm_client.missing
    if path is None or not Path(path).parent.parent.is_dir():
        return  # warm commands are off, or this user has no ~/.dstack yet (nothing to speed up)
    try:
        Path(path).parent.mkdir(mode=0o700, exist_ok=True)
        devnull = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0)
        program = "import sys; del sys.path[0]; from dstack.cli.warm_server import serve; serve(sys.argv[1])"
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-c", program, path],
            warm_client.shaping_environment(),
            file_actions=[devnull, (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)],
            setsid=True,
        )
    except OSError:
        pass  # the next command runs cold again, and tries again


def _exit_now_if_nothing_left(code: int) -> None:
    """End the process without the interpreter's teardown (freeing every module: ~10 ms, a tenth of a
    warm `dstack run`) when that teardown has nothing to do: no other thread and no exit handler but
    the one `logging` registers when imported (run here instead)."""
    import _thread
    import atexit

    count_handlers = getattr(atexit, "_ncallbacks", None)  # CPython's; elsewhere, exit the usual way
    # Threads alive besides this one (threading's are started through _thread too; importing threading
    # only to ask would cost every command ~0.5 ms).
    count_threads = getattr(_thread, "_count", None)
    logging = sys.modules.get("logging")
    if count_handlers is None or count_threads is None or count_threads() > 0:
        return
    if count_handlers() > (1 if logging is not None else 0):
        return
    try:
        if logging is not None:
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed or broken stream: the usual exit reports it as it always did
    os._exit(code)


def _main(
    argv: list[str] | None, parsers: dict[str | None, tuple[Parser, dict[str, Parser]]] | None = None
) -> int:
    _make_private()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" belongs to the task, untouched by our parser.
    after: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, after = argv[:split], argv[split + 1 :]
    # The first word is the command, unless it is an option of `dstack` itself (then all are built).
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser, commands = parsers[only] if parsers is not None else build_parser(only)
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown or after:
            parser.error(f"unrecognized arguments: {' '.join(unknown + after)}")
        if args.version:
            print(f"dstack {__version__}")
        else:
            parser.print_help()
        return 0
    if args.version:
        parser.error(f"--version takes no command or arguments (got {args.command})")
    if args.command not in PASSTHROUGH and (unknown or after):
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown + after)}")
    args.run_args = unknown + after
    return run_command(args)


def _make_private() -> None:
    """Whatever this process writes under ~/.dstack is the user's only (see dstack.core.private)."""
    from pathlib import Path

    from dstack.core.private import make_process_private, make_tree_private

    make_process_private()
    try:
        make_tree_private(Path.home() / ".dstack")
    except OSError:
        pass  # a folder we cannot change is reported by the command that needs it


def run_command(args: argparse.Namespace) -> int:
    from dstack.cli.errors import CLIError
    from dstack.cli.output import error

    module = _module(COMMANDS[args.command][0])
    try:
        return int(module.execute(args) or 0)
    except CLIError as e:
        error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dstack logs x | head`); that is not an error of ours.
        _silence_stdout()
        return 0
    except Exception as e:
        message = _known_error_message(e)
        if message is None:
            message = _report_unexpected(e)
        error(message)
        return 1


def _known_error_message(e: Exception) -> str | None:
    """Errors from the layers below that already carry a user-facing sentence."""
    for module_name, class_name in (
        ("dstack.api.errors", "APIError"),
        ("dstack.config.errors", "ConfigError"),
        ("dstack.code", "CodeError"),
        ("dstack.api.config", "ConfigFileError"),
    ):
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None and isinstance(e, cls):
            return str(e)
    return None


def _report_unexpected(e: Exception) -> str:
    import traceback
    from pathlib import Path

    log = Path.home() / ".dstack" / "logs" / "cli.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            traceback.print_exc(file=f)
        where = f"; details are in {log}"
    except OSError:
        where = ""
    return f"Unexpected error: {type(e).__name__}: {e}{where}"


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
