"""Profiles files, selection, CLI overrides and precedence: CLI > configuration > profile > default."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from config_testkit import parse, task

from dstack.config import (
    ConfigError,
    EffectiveProfile,
    Profile,
    ProfileOverrides,
    Retry,
    RetryEvent,
    SpotPolicy,
    load_profiles,
    parse_overrides,
    resolve_profile,
    select_profile,
)
from dstack.config.resolve import PASSED_THROUGH


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_profiles_file_with_every_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path / ".dstack" / "profiles.yml",
        """\
        profiles:
          - name: gpu-large
            default: true
            resources:
              gpu: A100:80GB:2
              memory: 64GB..
            backends: [local, ssh]
            regions: [home]
            spot_policy: spot
            max_price: 2.5
            max_duration: off
            retry_policy:
              limit: 3h
          - name: cpu
        """,
    )
    large, cpu = load_profiles([path])
    assert large.name == "gpu-large" and large.default is True
    assert large.backends == ["local", "ssh"] and large.regions == ["home"]
    assert large.spot_policy is SpotPolicy.SPOT and large.max_price == 2.5 and large.max_duration == "off"
    assert large.retry == Retry(duration=10800)
    assert cpu == Profile(name="cpu")


def test_missing_files_are_skipped_and_the_first_file_wins(tmp_path: Path) -> None:
    repo = _write(tmp_path / "repo" / "profiles.yml", "profiles:\n  - name: shared\n    max_price: 1\n")
    home = _write(
        tmp_path / "home" / "profiles.yml",
        "profiles:\n  - name: shared\n    max_price: 9\n  - name: home-only\n",
    )
    profiles = load_profiles([tmp_path / "nope.yml", repo, home])
    assert [(profile.name, profile.max_price) for profile in profiles] == [
        ("shared", 1.0),
        ("home-only", None),
    ]


@pytest.mark.parametrize("text", ["", "profiles:\n", "profiles: []\n"])
def test_empty_profiles_files(tmp_path: Path, text: str) -> None:
    assert load_profiles([_write(tmp_path / "profiles.yml", text)]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "profiles:\n  - name: a\n    default: true\n  - name: b\n    default: true\n",
            "5:14: Profiles 'a' and 'b' are both marked default: true; keep one",
        ),
        (
            "profiles:\n  - name: a\n  - name: a\n",
            "3:11: Profile 'a' is defined twice; give each profile its own name",
        ),
        ("profiles:\n  - default: true\n", "2:5: Missing required key 'name' in 'profiles[0]'"),
        (
            "profiles:\n  - name: a\n    default: yes\n",
            "3:14: Expected true or false for 'profiles[0].default', got 'yes'",
        ),
        (
            "profile:\n  - name: a\n",
            "1:1: Unknown key 'profile' in profiles file (did you mean profiles?); allowed keys: profiles",
        ),
        (
            "profiles:\n  - name: a\n    retry-limit: 3h\n",
            "3:5: Unknown key 'retry-limit' in profile; allowed keys: availability_zones, backend_options",
        ),
        (
            "profiles:\n  - name: a\n    max_price: 0\n",
            "3:16: The value of 'profiles[0].max_price' must be greater than 0",
        ),
        (
            "- name: a\n",
            "1:1: The top level of a profiles file must be a mapping of keys such as profiles, got a list",
        ),
    ],
)
def test_bad_profiles_files(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path / "profiles.yml", text)
    with pytest.raises(ConfigError) as caught:
        load_profiles([path])
    assert str(caught.value).startswith(f"{path}:{expected}")


PROFILES = [Profile(name="a"), Profile(name="b", default=True), Profile(name="c", default=False)]


def test_select_profile_by_name_then_default() -> None:
    assert select_profile(PROFILES, "c") is PROFILES[2]
    assert select_profile(PROFILES, None) is PROFILES[1]
    assert select_profile([Profile(name="a")], None) is None
    assert select_profile([], None) is None


def test_select_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        select_profile(PROFILES, "x")
    assert str(caught.value) == "No profile named 'x'; available: a, b, c"


def _resolve(config_extra: str = "", profile: Profile | None = None, **flags: object) -> EffectiveProfile:
    return resolve_profile(parse(task(config_extra)), profile, parse_overrides(**flags))  # type: ignore[arg-type]


def test_defaults_when_nothing_is_set() -> None:
    effective = _resolve()
    assert effective.model_dump(mode="json") == {
        "resources": {
            "cpu": {"arch": None, "count": {"min": 2, "max": None}},
            "memory": {"min": 8.0, "max": None},
            "disk": None,
            "shm_size": None,
            "gpu": None,
        },
        "resources_explicit": {"cpu": False, "memory": False, "disk": False, "shm_size": False, "gpu": False},
        "backends": None,
        "regions": None,
        "spot_policy": "on-demand",
        "max_price": None,
        "max_duration": None,
        "retry": None,
        "profile_name": None,
        # Today's dstack's profile fields: unset unless a layer sets them.
        **dict.fromkeys(PASSED_THROUGH),
    }
    json.dumps(effective.model_dump(mode="json"))


PROFILE = Profile(
    name="team",
    resources={"gpu": "A10", "cpu": 8, "memory": "32GB..", "disk": "200GB.."},
    backends=["ssh"],
    spot_policy="auto",
    max_price=3,
    max_duration="1h",
    retry=True,
)


def test_profile_over_defaults() -> None:
    effective = _resolve(profile=PROFILE)
    assert str(effective.resources) == "cpu=8 memory=32GB.. disk=200GB.. gpu=A10:1.."
    assert effective.backends == ["ssh"] and effective.spot_policy is SpotPolicy.AUTO
    assert effective.max_price == 3 and effective.max_duration == 3600
    assert effective.retry == Retry() and effective.profile_name == "team"
    assert effective.resources_explicit == {
        "cpu": True,
        "memory": True,
        "disk": True,
        "shm_size": False,
        "gpu": True,
    }


def test_configuration_over_profile_per_resource_field() -> None:
    effective = _resolve(
        "resources:\n  memory: 16GB..\nspot_policy: spot\nmax_duration: 3h\n"
        "retry: false\nbackends: [local]\n",
        profile=PROFILE,
    )
    assert str(effective.resources) == "cpu=8 memory=16GB.. disk=200GB.. gpu=A10:1.."
    assert effective.spot_policy is SpotPolicy.SPOT and effective.max_duration == 10800
    assert effective.retry is None and effective.backends == ["local"]


def test_cli_over_configuration_and_profile() -> None:
    effective = _resolve(
        "resources:\n  memory: 16GB..\n  gpu: H100\nmax_duration: 3h\nmax_price: 2\n",
        profile=PROFILE,
        gpu="24GB..:2",
        memory="64GB",
        max_duration="off",
        max_price=0.5,
        spot_policy="on-demand",
        retry_limit="3h",
        backends=["local"],
    )
    assert str(effective.resources) == "cpu=8 memory=64GB disk=200GB.. gpu=24GB..:2"
    assert effective.max_duration is None and effective.max_price == 0.5
    assert effective.spot_policy is SpotPolicy.ON_DEMAND and effective.backends == ["local"]
    assert effective.retry == Retry(duration=10800)


def test_cli_no_retry_turns_off_a_profile_retry() -> None:
    assert _resolve(profile=PROFILE, retry=False).retry is None
    assert _resolve(profile=PROFILE, retry=True).retry == Retry()


def test_max_duration_true_falls_back_to_the_profile() -> None:
    assert _resolve("max_duration: true\n", profile=PROFILE).max_duration == 3600


def test_gpu_zero_means_no_gpu() -> None:
    effective = _resolve("resources:\n  gpu: 0\n", profile=PROFILE)
    assert effective.resources.gpu is None and effective.resources_explicit["gpu"] is True


def test_overrides_default_to_nothing() -> None:
    assert parse_overrides() == ProfileOverrides()


def test_parse_overrides_reads_every_flag() -> None:
    overrides = parse_overrides(
        gpu="A100:2",
        cpu="arm:4..",
        memory="16GB..",
        disk="100GB..",
        backends=["local"],
        max_price=1.0,
        max_duration="72h",
        spot_policy="auto",
        retry=True,
    )
    assert str(overrides.resources) == "cpu=arm:4.. memory=16GB.. disk=100GB.. gpu=A100:2"
    assert overrides.max_duration == 259200 and overrides.spot_policy is SpotPolicy.AUTO
    assert overrides.retry == Retry(on_events=list(RetryEvent), duration=3600)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"gpu": "A100:2:3"}, "Invalid --gpu value 'A100:2:3': the count is given twice ('2' and '3')"),
        (
            {"gpu": "A100:"},
            "Invalid --gpu value 'A100:': it has an empty part; separate the parts with a single ':'",
        ),
        ({"cpu": "2:foo"}, "Invalid --cpu value '2:foo': unknown architecture 'foo'; use x86 or arm"),
        ({"memory": "lots"}, "Invalid --memory value 'lots': use a number with MB, GB or TB"),
        ({"disk": "9..1"}, "Invalid --disk value '9..1': min (9GB) is greater than max (1GB)"),
        ({"max_duration": "2y"}, "Invalid --max-duration value '2y': use seconds or a number with a unit"),
        ({"retry_limit": "soon"}, "Invalid --retry-limit value 'soon': use seconds or a number with a unit"),
        ({"retry_limit": "0"}, "Invalid --retry-limit value '0': it must be longer than zero"),
        ({"retry": False, "retry_limit": "1h"}, "--no-retry and --retry-limit contradict each other"),
        ({"spot_policy": "cheap"}, "Invalid --spot-policy value 'cheap': use one of spot, on-demand, auto"),
        ({"backends": ["azur"]}, "Invalid --backend value 'azur': use one of local, ssh, slurm, amddevcloud"),
        ({"max_price": 0.0}, "Invalid --max-price value '0.0': use a price in USD per hour above 0"),
        ({"max_price": float("nan")}, "Invalid --max-price value 'nan'"),
    ],
)
def test_bad_flags(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_overrides(**flags)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
