"""Fleet hosts in placement: `fleets:`/`--fleet` and `-b ssh` restrict it, and a project sees only its own
fleets' hosts (and this machine)."""

from __future__ import annotations

from scheduler_testkit import host, req, usage

from dstack.server.scheduler.placement import decide, for_project, no_offer_message, offers


def _hosts() -> list:
    return [
        usage(host(id="local")),
        usage(host(id="a", name="10.0.0.1", backend="ssh", region="boxes", fleet="boxes", project_id="p1")),
        usage(
            host(id="b", name="10.0.0.2", backend="ssh", region="gpus", fleet="gpus", project_id="p1", cpus=8)
        ),
        usage(
            host(
                id="c",
                name="10.0.0.3",
                backend="ssh",
                region="theirs",
                fleet="theirs",
                project_id="p2",
                cpus=64,
            )
        ),
    ]


def test_a_project_sees_this_machine_and_its_own_fleets_only() -> None:
    visible = for_project(_hosts(), "p1")
    assert [u.host.id for u in visible] == ["local", "a", "b"]
    assert [u.host.id for u in for_project(_hosts(), "p3")] == ["local"]


def test_fleets_restrict_placement_to_their_hosts() -> None:
    visible = for_project(_hosts(), "p1")
    decision = decide(req(fleets=["gpus"]), visible, "j")
    assert decision.host is not None and decision.host.id == "b"
    decision = decide(req("fleets: [boxes]\n"), visible, "j")
    assert decision.host is not None and decision.host.id == "a"
    assert {o.host.id for o in offers(req(backends=["ssh"]), visible)} == {"a", "b"}
    assert {o.host.id for o in offers(req(), visible)} == {"local", "a", "b"}


def test_no_offer_says_which_fleet_was_asked() -> None:
    visible = for_project(_hosts(), "p1")
    decision = decide(req(fleets=["theirs"]), visible, "j")
    assert decision.impossible_reason is not None
    assert decision.impossible_reason.startswith("No offer is in fleet theirs")
    # Another project's big host is never named, nor offered.
    assert "10.0.0.3" not in no_offer_message(req(cpu="32"), [u.host for u in visible])
