"""The bad-input sweep: hundreds of malformed configurations, flags and paths, generated, each run through
the CLI's own entry point (`dstack.cli.main.main`) in this process, so the whole sweep takes seconds.

Every case must end the way SPEC §4 and the team's rules say bad input ends: a non-zero exit code, one
sentence on stderr (one line, a bounded length), no "Unexpected error" and no traceback, nothing logged as
unexpected in ~/.dstack/logs/cli.log, and no server contacted (the input is refused before that).
"""

# ruff: noqa: RUF001 - digits and letters of other scripts are what these tests are about
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HUGE = "9" * 5000  # over Python's 4,300-digit limit for reading an integer from text
LONG_DIGITS = "9" * 4301
LONG_TEXT = "x" * 10_000
UNICODE_DIGITS = ["٨٠", "８０", "२", "２", "１h", "٣٠m", "۵", "𝟖"]
MAX_MESSAGE = 600  # characters: an error may name a file and a value, but never echo all of the input
# A server nothing answers at: a case that gets this far was accepted by every check before the server.
UNREACHABLE = "Cannot reach the dstack server"


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    cwd: str = "."  # relative to the case's folder
    # A phrase the message must contain (to prove the right check refused it), if any.
    expect: str | None = None


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    logged: str

    def problems(self) -> list[str]:
        found = []
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if self.code == 0:
            found.append("exit code 0")
        if len(lines) != 1:
            found.append(f"{len(lines)} lines on stderr")
        if "Unexpected error" in self.stderr or "Traceback" in self.stderr:
            found.append("unexpected error")
        if self.logged.strip():
            found.append("something logged in cli.log")
        if UNREACHABLE in self.stderr:
            found.append("accepted (it reached the server)")
        if len(self.stderr) > MAX_MESSAGE:
            found.append(f"{len(self.stderr)} characters on stderr")
        if self.case.expect is not None and self.case.expect not in self.stderr:
            found.append(f"no {self.case.expect!r} in the message")
        return found


def write_case(case: Case, base: Path) -> Path:
    """The case's folder under `base`, with its files in it."""
    folder = base / case.id.replace("/", "_")[:80]
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogateescape")
    return folder


def run_case(case: Case, base: Path) -> Outcome:
    """Run one case in its own folder under `base`, with HOME = base/home."""
    from dstack.cli.main import main

    folder = write_case(case, base)
    home = base / "home"
    log = home / ".dstack" / "logs" / "cli.log"
    log.unlink(missing_ok=True)
    stderr, stdout = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(folder / case.cwd)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                code = main([a.replace("{dir}", str(folder)) for a in case.argv])
            except SystemExit as e:  # argparse exits on its own errors and on --help
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old_cwd)
    logged = log.read_text() if log.exists() else ""
    return Outcome(case, code, stderr.getvalue(), logged)


@contextlib.contextmanager
def sweep_home(base: Path) -> Iterator[Path]:
    """HOME for the sweep: a CLI configured with a server that nothing answers at."""
    import socket

    home = base / "home"
    (home / ".dstack").mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    config = {
        "projects": [{"name": "main", "url": f"http://127.0.0.1:{port}", "token": "t", "default": True}]
    }
    (home / ".dstack" / "config.yml").write_text(json.dumps(config))
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    import dstack.cli.embedded
    import dstack.server.main

    # Nothing a case does may start a server: input that gets that far was accepted.
    saved = (dstack.server.main.serve, dstack.cli.embedded.start_embedded_server)
    dstack.server.main.serve = _refuse_to_serve  # type: ignore[assignment]
    dstack.cli.embedded.start_embedded_server = _refuse_to_serve  # type: ignore[assignment]
    # The CLI makes its process private (umask 077, DSTACK_USER_UMASK): this process must not stay so.
    umask, recorded = os.umask(0o022), os.environ.get("DSTACK_USER_UMASK")
    os.umask(umask)
    try:
        yield home
    finally:
        dstack.server.main.serve, dstack.cli.embedded.start_embedded_server = saved
        os.umask(umask)
        if recorded is None:
            os.environ.pop("DSTACK_USER_UMASK", None)
        else:
            os.environ["DSTACK_USER_UMASK"] = recorded
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


def _refuse_to_serve(*args: object, **kwargs: object) -> None:
    from dstack.cli.errors import CLIError

    raise CLIError(f"{UNREACHABLE}: the sweep does not start servers")


# -- the cases ---------------------------------------------------------------------------------------------

CONFIG = "bad.dstack.yml"
BASE = "type: task\ncommands:\n  - echo hi\n"


def _config_case(case_id: str, text: str | bytes, expect: str | None = None, *extra: str) -> Case:
    return Case(case_id, ["run", "{dir}", "-f", CONFIG, "-y", *extra], {CONFIG: text}, expect=expect)


def _with(line: str) -> str:
    return BASE + line + "\n"


# Values that no numeric field may take.
_BAD_NUMBERS: list[tuple[str, str]] = [
    ("huge", HUGE),
    ("long-digits", LONG_DIGITS),
    ("huge-quoted", f'"{HUGE}"'),
    ("huge-negative", "-" + HUGE),
    ("huge-float", HUGE + ".5"),
    ("huge-exponent", "1e99999"),
    ("negative", "-1"),
    ("nan", ".nan"),
    ("inf", ".inf"),
    ("minus-inf", "-.inf"),
    ("bool", "true"),
    ("list", "[1, 2]"),
    ("mapping", "{a: 1}"),
    ("empty-string", '""'),
    ("blank-string", '"   "'),
    ("word", "lots"),
    ("long-text", LONG_TEXT),
    ("newline", '"1\\n2"'),
    ("nul", '"1\\x002"'),
    ("emoji", '"🚀"'),
    ("hex", "0x10"),
    ("octal-ish", "0o17"),
    ("tag", "!!python/object:os.system 1"),
    *[(f"unicode-{i}", f'"{digits}"') for i, digits in enumerate(UNICODE_DIGITS)],
    *[(f"unicode-plain-{i}", digits) for i, digits in enumerate(UNICODE_DIGITS)],
]
_NUMERIC_FIELDS = [
    "max_price: {}",
    "max_duration: {}",
    "python: {}",
    "resources:\n  cpu: {}",
    "resources:\n  memory: {}",
    "resources:\n  disk: {}",
    "resources:\n  shm_size: {}",
    "resources:\n  gpu: {}",
    "ports:\n  - {}",
    "retry:\n  duration: {}",
]
# Values that these fields must refuse even though they are numbers or look like ones.
_FIELD_SPECIFIC: list[tuple[str, str, str | None]] = [
    ("cpu-zero", "resources:\n  cpu: 0", "cpu"),
    ("cpu-zero-range", "resources:\n  cpu: 0..0", "cpu"),
    ("cpu-zero-text", 'resources:\n  cpu: "0"', "cpu"),
    ("cpu-unicode-two", "resources:\n  cpu: ２", None),
    ("memory-zero", "resources:\n  memory: 0", "memory"),
    ("memory-zero-gb", "resources:\n  memory: 0GB", "memory"),
    ("memory-zero-range", "resources:\n  memory: 0GB..0GB", "memory"),
    ("duration-unicode", "max_duration: １h", None),
    ("duration-unicode-quoted", 'max_duration: "٣٠m"', None),
    ("port-arabic", 'ports:\n  - "٨٠"', None),
    ("port-fullwidth", 'ports:\n  - "８０"', None),
    ("port-mapping-unicode", 'ports:\n  - "٨٠:٨٠"', None),
    ("port-star-unicode", 'ports:\n  - "*:８０"', None),
    ("port-zero", "ports:\n  - 0", None),
    ("port-65536", "ports:\n  - 65536", None),
    ("port-huge-mapping", f'ports:\n  - "{HUGE}:80"', None),
    ("port-mapping-huge-local", f"ports:\n  - local_port: {HUGE}\n    container_port: 80", None),
    ("gpu-huge-count", f'resources:\n  gpu: "A100:{HUGE}"', None),
    ("gpu-huge-memory", f'resources:\n  gpu: "{HUGE}GB"', None),
    ("gpu-unicode-count", 'resources:\n  gpu: "A100:２"', None),
    ("gpu-unicode-memory", 'resources:\n  gpu: "２４GB"', None),
    ("gpu-superscript", 'resources:\n  gpu: "A100:²"', None),
    ("cpu-superscript", 'resources:\n  cpu: "²"', None),
    ("cpu-range-superscript", 'resources:\n  cpu: "2..²"', None),
    ("memory-unicode", 'resources:\n  memory: "１６GB"', None),
    ("memory-range-unicode", 'resources:\n  memory: "８GB.."', None),
    ("disk-zero-bad-unicode", 'resources:\n  disk: "０GB"', None),
    ("cpu-range-huge", f'resources:\n  cpu: "2..{HUGE}"', None),
    ("memory-range-huge", f'resources:\n  memory: "{HUGE}GB.."', None),
    ("memory-huge-mb", f'resources:\n  memory: "{HUGE}MB"', None),
    ("cpu-mapping-huge", f"resources:\n  cpu:\n    min: {HUGE}", None),
    ("gpu-mapping-huge-count", f"resources:\n  gpu:\n    count: {HUGE}", None),
    ("gpu-count-zero-name", 'resources:\n  gpu: "A100:0..0:x"', None),
    ("duration-huge-unit", f'max_duration: "{HUGE}h"', None),
    ("duration-huge-seconds", f'max_duration: "{HUGE}"', None),
    ("retry-duration-huge", f"retry:\n  duration: {HUGE}s", None),
    ("max-price-zero", "max_price: 0", None),
    ("max-price-text", "max_price: cheap", None),
]
_TEXT_FIELDS = ["name: {}", "image: {}", "working_dir: {}", "env:\n  - {}", "python: {}", "type: {}"]
_BAD_TEXTS: list[tuple[str, str]] = [
    ("long", LONG_TEXT),
    ("long-quoted", f'"{LONG_TEXT}"'),
    ("newline", '"a\\nb"'),
    ("nul", '"a\\x00b"'),
    ("control", '"a\\x1bb"'),
    ("emoji", '"🚀🚀"'),
    ("rtl", '"\\u202eabc"'),
    ("spaces", '"a b c"'),
    ("slashes", '"../../etc"'),
    ("absolute", '"/etc/passwd"'),
    ("shell", '"$(touch /tmp/p)"'),
    ("huge-number", HUGE),
    ("list", "[a, b]"),
    ("mapping", "{a: b}"),
    ("null-word", "~"),
]
_STRUCTURE: list[tuple[str, str | bytes, str | None]] = [
    ("empty", "", None),
    ("only-comment", "# nothing\n", None),
    ("list-top", "- a\n- b\n", None),
    ("scalar-top", "task\n", None),
    ("no-type", "commands: [ls]\n", "type"),
    ("no-commands", "type: task\n", "commands"),
    ("empty-commands", "type: task\ncommands: []\n", "commands"),
    ("commands-string", "type: task\ncommands: echo hi\n", None),
    ("commands-mapping", "type: task\ncommands:\n  - echo a: b\n", None),
    ("commands-number", "type: task\ncommands:\n  - 5\n", None),
    ("commands-null", "type: task\ncommands:\n  -\n", None),
    ("commands-nested-list", "type: task\ncommands:\n  - [a, b]\n", None),
    ("unknown-key", "type: task\ncomands: [ls]\n", "comands"),
    ("unknown-resource", BASE + "resources:\n  cpus: 4\n", "cpus"),
    ("unknown-gpu-key", BASE + "resources:\n  gpu:\n    nam: A100\n", "nam"),
    ("duplicate-key", "type: task\ntype: task\ncommands: [ls]\n", "Duplicate"),
    ("image-and-python", BASE + "image: x\npython: '3.11'\n", "mutually exclusive"),
    ("service-type", "type: service\ncommands: [ls]\n", None),
    ("type-number", "type: 5\ncommands: [ls]\n", None),
    ("yaml-syntax", "type: task\ncommands: [echo hi\n", None),
    ("yaml-tab", "type: task\ncommands:\n\t- ls\n", None),
    ("yaml-alias-loop", "a: &a [*a]\n", None),
    ("yaml-merge", "base: &b {type: task}\n<<: *b\ncommands: [ls]\n", None),
    ("yaml-python-tag", "type: !!python/name:os.system task\ncommands: [ls]\n", None),
    ("yaml-custom-tag", "type: !custom task\ncommands: [ls]\n", None),
    ("yaml-binary-tag", "type: task\ncommands: [!!binary aGk=]\n", None),
    ("yaml-timestamp", "type: task\nname: 2001-12-14\ncommands: [ls]\n", None),
    ("yaml-deep", "type: task\ncommands: " + "[" * 5000 + "]" * 5000 + "\n", None),
    (
        "yaml-billion-laughs",
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join('*' + chr(97 + i) for _ in range(10))}]\n"
            for i in range(7)
        ),
        None,
    ),
    ("yaml-two-documents", "type: task\ncommands: [ls]\n---\ntype: task\n", None),
    ("not-utf8", b"type: task\ncommands: [\xff\xfe]\n", "UTF-8"),
    ("binary-file", bytes(range(256)), None),
    ("bom-bad", b"\xef\xbb\xbf\xef\xbb\xbftype: task\n", None),
    ("nul-in-file", "type: task\x00\ncommands: [ls]\n", None),
    ("env-duplicate", BASE + "env:\n  - A=1\n  - A=2\n", "twice"),
    ("env-bad-name", BASE + "env:\n  - 1A=1\n", None),
    ("env-unset", BASE + "env:\n  - DSTACK_SWEEP_UNSET_VARIABLE\n", "not set"),
    ("env-mapping-list", BASE + "env:\n  A: [1]\n", None),
    ("env-number-top", BASE + "env: 5\n", None),
    ("ports-duplicate", BASE + "ports: [80, 80]\n", "twice"),
    ("ports-mapping-bad", BASE + "ports:\n  - {local_port: 1}\n", None),
    ("ports-text", BASE + "ports: 80\n", None),
    ("retry-bad-event", BASE + "retry:\n  on_events: [flood]\n", None),
    ("retry-text", BASE + "retry: maybe\n", None),
    ("spot-bad", BASE + "spot_policy: sometimes\n", None),
    ("backends-text", BASE + "backends: local\n", None),
    ("interp-unknown", "type: task\ncommands:\n  - echo ${{ run.argz }}\n", "run.argz"),
    ("interp-unclosed", "type: task\ncommands:\n  - echo ${{ run.args\n", None),
    ("interp-illegal", "type: task\ncommands:\n  - echo ${{ $(ls) }}\n", None),
    ("interp-env-unknown", "type: task\ncommands:\n  - echo ${{ env.NOPE }}\n", None),
    ("interp-long-name", "type: task\ncommands:\n  - echo ${{ env." + "A" * 10_000 + " }}\n", None),
    ("working-dir-escape", BASE + "working_dir: ../..\n", None),
    ("working-dir-long", BASE + "working_dir: " + "a/" * 3000 + "\n", None),
    ("working-dir-long-name", BASE + "working_dir: " + "a" * 300 + "\n", None),
    ("name-upper", BASE + "name: Train\n", None),
    ("name-long", BASE + "name: " + "a" * 10_000 + "\n", None),
    ("image-blank", BASE + 'image: " "\n', None),
    ("python-old", BASE + "python: '2.7'\n", None),
    ("python-float", BASE + "python: 3.1\n", None),
]
# Flags of `dstack run` with values they must refuse.
_FLAG_VALUES: list[tuple[str, list[str]]] = [
    ("--gpu", [HUGE, "A100::2", "٢", "A100:２", "0..x", LONG_TEXT, "", "A100:" + HUGE, HUGE + "GB", "²"]),
    ("--cpu", ["0", HUGE, "٢", "２", "-1", "x86:0", LONG_TEXT, "", "0..0", "²", "2.." + HUGE]),
    ("--memory", ["0", "0GB", HUGE, "１６GB", "-1", LONG_TEXT, "", "8GB..4GB", HUGE + "MB"]),
    ("--disk", [HUGE, "٢GB", "-5", LONG_TEXT, ""]),
    ("--max-price", [HUGE, "-1", "nan", "inf", "٢", LONG_TEXT, "", "0"]),
    ("--max-duration", [HUGE, "１h", "-1h", LONG_TEXT, "", HUGE + "h", "1x"]),
    ("--retry-limit", [HUGE, "٣٠m", "-5m", LONG_TEXT, "", HUGE + "s"]),
    ("-p", [HUGE, "٨٠", "８０", "0", "65536", "a:b", LONG_TEXT, "", HUGE + ":80", "*:" + HUGE, "80:80:80"]),
    ("-e", ["1A=2", "=x", LONG_TEXT, "", "A B=1", "DSTACK_SWEEP_UNSET_VARIABLE"]),
    ("-n", [LONG_TEXT, "A", "a", "-x", "a_b", "a" * 42, HUGE, "\n", "🚀"]),
    ("--profile", ["nope", LONG_TEXT, ""]),
    ("-b", [LONG_TEXT]),
]
_OTHER_COMMANDS: list[tuple[str, list[str], str | None]] = [
    ("no-command-unknown-flag", ["--foo"], "--foo"),
    ("version-extra", ["--version", "extra"], None),
    ("version-command", ["--version", "ps"], None),
    ("unknown-command", ["frobnicate"], None),
    ("ps-unknown-flag", ["ps", "--bogus"], "--bogus"),
    ("ps-limit-huge", ["ps", "-n", HUGE], None),
    ("ps-limit-zero", ["ps", "-n", "0"], None),
    ("ps-limit-text", ["ps", "-n", LONG_TEXT], None),
    ("ps-limit-unicode", ["ps", "-n", "٢"], None),
    ("logs-tail-huge", ["logs", "x", "--tail", HUGE], None),
    ("logs-tail-negative", ["logs", "x", "--tail", "-1"], None),
    ("logs-tail-unicode", ["logs", "x", "--tail", "٢"], None),
    ("logs-no-run", ["logs"], None),
    ("attach-no-run", ["attach"], None),
    ("stop-no-run", ["stop"], None),
    ("server-port-huge", ["server", "--port", HUGE], None),
    ("server-port-zero", ["server", "--port", "0"], None),
    ("server-port-unicode", ["server", "--port", "٨٠"], None),
    ("server-port-big", ["server", "--port", "70000"], None),
    ("server-host-foreign", ["server", "--host", "::2", "--port", "39001"], "not an address of this machine"),
    ("server-host-foreign-v4", ["server", "--host", "192.0.2.77", "--port", "39001"], "not an address"),
    ("server-host-garbage", ["server", "--host", "not a host!", "--port", "39001"], None),
    ("server-host-long", ["server", "--host", LONG_TEXT, "--port", "39001"], None),
    ("server-log-level", ["server", "--log-level", "loud"], None),
    ("config-bad-url", ["config", "--url", "ftp://x", "--token", "t"], None),
    ("config-long-url", ["config", "--url", "http://" + LONG_TEXT, "--token", "t"], None),
    ("offer-gpu-huge", ["offer", "--gpu", HUGE], None),
    ("offer-cpu-zero", ["offer", "--cpu", "0"], None),
    ("offer-memory-unicode", ["offer", "--memory", "８GB"], None),
    ("run-flag-after-double-dash-only", ["run", "{dir}", "-f", "missing.dstack.yml"], "does not exist"),
    ("run-reload-detach", ["run", "{dir}", "-f", CONFIG, "-d", "--reload", "-y"], None),
]


def _path_cases() -> list[Case]:
    long_name = "a" * 300 + ".dstack.yml"  # over NAME_MAX (255)
    long_path = "/".join(["d" * 200] * 30) + "/x.dstack.yml"  # over PATH_MAX (4096)
    cases = [
        Case("path-long-file-name", ["run", "{dir}", "-f", long_name, "-y"]),
        Case("path-long-path", ["run", "{dir}", "-f", long_path, "-y"]),
        Case("path-long-workdir", ["run", "a" * 300, "-y"]),
        Case("path-long-workdir-path", ["run", "/".join(["w" * 250] * 20), "-y"]),
        Case("path-nul", ["run", "{dir}", "-f", "a\x00b.dstack.yml", "-y"]),
        Case("path-workdir-nul", ["run", "a\x00b", "-y"]),
        Case("path-folder-as-file", ["run", "{dir}", "-f", "sub", "-y"], {"sub/x": "x"}),
        Case("path-wrong-suffix", ["run", "{dir}", "-f", "conf.yml", "-y"], {"conf.yml": BASE}),
        Case("path-workdir-is-file", ["run", "file.txt", "-y"], {"file.txt": "x"}),
        Case("path-no-config", ["run", "{dir}", "-y"]),
        Case("path-unreadable-config", ["run", "{dir}", "-f", "/proc/self/mem.dstack.yml", "-y"]),
        Case("path-dev-null-config", ["run", "{dir}", "-f", "/dev/null", "-y"]),
        Case(
            "path-config-is-fifo-name",
            ["run", "{dir}", "-f", "x" * 255 + "/y.dstack.yml", "-y"],
        ),
    ]
    return cases


# (field, value) pairs of the generated grid that are good input after all.
_VALID = {
    ("max_duration", "bool"),  # `max_duration: true` asks for the default
    ("resources:gpu", "word"),  # `gpu: lots` names a GPU model called LOTS
    ("name", "null-word"),
    ("image", "null-word"),
    ("python", "null-word"),
    ("working_dir", "null-word"),
    ("working_dir", "emoji"),  # folder names may have emoji, spaces and dollars: they are never run
    ("working_dir", "spaces"),
    ("working_dir", "shell"),
    ("working_dir", "absolute"),  # an absolute working_dir is the container's
}


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for template in _NUMERIC_FIELDS:
        field_name = template.split(":")[0].replace("\n", "").replace(" ", "")
        if template.startswith("resources"):
            field_name = "resources:" + template.split("\n")[1].split(":")[0].strip()
        for value_id, value in _BAD_NUMBERS:
            if (field_name, value_id) in _VALID:
                continue
            text = _with(template.format(value))
            cases.append(_config_case(f"num/{field_name}/{value_id}", text))
    for case_id, line, expect in _FIELD_SPECIFIC:
        cases.append(_config_case(f"field/{case_id}", _with(line), expect))
    for template in _TEXT_FIELDS:
        field_name = template.split(":")[0]
        for value_id, value in _BAD_TEXTS:
            if (field_name, value_id) in _VALID:
                continue
            cases.append(_config_case(f"text/{field_name}/{value_id}", _with(template.format(value))))
    for case_id, text, expect in _STRUCTURE:
        cases.append(_config_case(f"structure/{case_id}", text, expect))
    for flag, values in _FLAG_VALUES:
        for index, value in enumerate(values):
            case = _config_case(f"flag/{flag.lstrip('-')}/{index}", BASE, None, flag, value)
            cases.append(case)
    for case_id, argv, expect in _OTHER_COMMANDS:
        cases.append(Case(f"command/{case_id}", argv, {CONFIG: BASE}, expect=expect))
    cases.extend(_path_cases())
    # A run spec over the agent's 1 MB limit: refused before submission.
    big_env = "".join(f"  - V{i}={'v' * 1000}\n" for i in range(1100))
    cases.append(_config_case("size/spec-over-limit", BASE + "env:\n" + big_env, "too big"))
    big_commands = "".join(f"  - echo {'c' * 1000}\n" for i in range(1100))
    cases.append(
        _config_case("size/commands-over-limit", "type: task\ncommands:\n" + big_commands, "too big")
    )
    return cases


def main() -> None:  # pragma: no cover - `python tests/unit/cli/sweepkit.py` prints every problem
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="dstack-sweep-"))
    with sweep_home(base):
        outcomes = [run_case(case, base) for case in all_cases()]
    bad = [o for o in outcomes if o.problems()]
    for outcome in bad:
        print(f"{outcome.case.id}: {', '.join(outcome.problems())}: {outcome.stderr[:300]!r}")
    print(f"{len(outcomes)} cases, {len(bad)} with problems", file=sys.stderr)


if __name__ == "__main__":
    main()
