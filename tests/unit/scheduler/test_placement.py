"""Placement as a pure function: what a task reserves, what caps it, sharing, GPUs, ports, FIFO, offers."""

from __future__ import annotations

from scheduler_testkit import held, host, req, usage

from dstack.server.scheduler.model import Allocation
from dstack.server.scheduler.placement import allocate, decide, no_offer_message, offers, placement_note


def test_a_task_that_sets_nothing_shares_the_host_uncapped() -> None:
    machine = usage(host(), held("other"))
    got = allocate(req(), machine, "j1")
    assert isinstance(got, Allocation)
    assert (got.cpus, got.memory_gb, got.exclusive) == (0, 0, False)
    assert got.cpu_limit is None and got.memory_limit_gb is None


def test_set_cpu_and_memory_are_reserved_and_capped() -> None:
    got = allocate(req(cpu="1", memory="4GB"), usage(host()), "j1")
    assert isinstance(got, Allocation)
    assert (got.cpus, got.memory_gb) == (1, 4)
    assert (got.cpu_limit, got.memory_limit_gb) == (1, 4)


def test_a_range_reserves_its_minimum_and_caps_at_its_maximum() -> None:
    got = allocate(req(cpu="2..6", memory="8GB.."), usage(host(cpus=8, memory_gb=64)), "j1")
    assert isinstance(got, Allocation)
    assert (got.cpus, got.cpu_limit) == (2, 6)
    assert (got.memory_gb, got.memory_limit_gb) == (8, None)  # an open range is not capped


def test_reservations_never_exceed_the_host() -> None:
    machine = usage(host(cpus=8, memory_gb=64), held("a", cpus=6, memory=16))
    assert isinstance(allocate(req(cpu="2"), machine, "j"), Allocation)
    busy = allocate(req(cpu="3"), machine, "j")
    assert busy == "this machine has 2 of 8 CPUs free (run a)"
    busy = allocate(req(memory="50GB"), machine, "j")
    assert busy == "this machine has 48GB of 64GB memory free (run a)"


def test_a_task_asking_for_all_cpus_runs_alone() -> None:
    machine = host(cpus=2)
    got = allocate(req(cpu="2"), usage(machine), "first")
    assert isinstance(got, Allocation) and got.exclusive
    # Nothing joins it, not even a task that sets nothing ...
    assert allocate(req(), usage(machine, held("first", cpus=2, exclusive=True)), "j") == (
        "this machine is held alone by run first"
    )
    # ... and it waits for the tasks already there.
    assert allocate(req(cpu="2"), usage(machine, held("small")), "j") == (
        "this machine must be free of other tasks (it runs run small)"
    )


def test_all_of_the_memory_is_the_whole_host_too() -> None:
    got = allocate(req(memory="24GB"), usage(host(memory_gb=23.4)), "j")
    assert isinstance(got, Allocation) and got.exclusive


def test_tasks_that_set_nothing_wait_when_every_cpu_is_reserved() -> None:
    machine = usage(host(cpus=4), held("a", cpus=2), held("b", cpus=2))
    assert allocate(req(), machine, "j") == "this machine has 0 of 4 CPUs free (runs a, b)"


def test_two_tasks_never_share_a_gpu_and_a_third_waits() -> None:
    machine = host(gpus=[("H100", 80), ("H100", 80)])
    first = allocate(req(gpu="1"), usage(machine), "j1")
    assert isinstance(first, Allocation) and first.gpus == (0,)
    second = allocate(req(gpu="1"), usage(machine, held("one", gpus=(0,))), "j2")
    assert isinstance(second, Allocation) and second.gpus == (1,)
    third = allocate(req(gpu="1"), usage(machine, held("one", gpus=(0,)), held("two", gpus=(1,))), "j3")
    assert third == (
        "this machine has 0 matching GPUs free, the task needs 1 (the others are held by runs one, two)"
    )


def test_a_gpu_count_range_takes_its_minimum() -> None:
    machine = host(gpus=[("A100", 40)] * 4)
    got = allocate(req(gpu="A100:2.."), usage(machine), "j")
    assert isinstance(got, Allocation) and got.gpus == (0, 1)


def test_only_matching_gpus_are_given() -> None:
    machine = host(gpus=[("NVIDIA A10G", 22.5), ("NVIDIA A100-SXM4-80GB", 79.2)])
    got = allocate(req(gpu="A100"), usage(machine), "j")
    assert isinstance(got, Allocation) and got.gpus == (1,)


def test_ports_are_held_on_the_host() -> None:
    machine = host()
    web = Allocation(job_id="job-web", ports=(7860,), run_name="web")
    busy = allocate(req(ports=[7860]), usage(machine, web), "j")
    assert busy == "port 7860 on this machine is held by run web"
    assert isinstance(allocate(req(ports=[8000]), usage(machine, web), "j"), Allocation)


def test_decide_picks_the_cheapest_host_that_fits_now() -> None:
    cheap, dear = host(id="cheap", name="a", backend="ssh", price=1), host(id="dear", name="b", price=3)
    decision = decide(req(), [usage(dear), usage(cheap)], "j")
    assert decision.host is not None and decision.host.id == "cheap"
    full = usage(cheap, held("x", cpus=2, exclusive=True))
    decision = decide(req(), [usage(dear), full], "j")
    assert decision.host is not None and decision.host.id == "dear"


def test_decide_waits_when_hosts_that_fit_are_busy_and_says_why() -> None:
    decision = decide(req(cpu="2"), [usage(host(), held("blocker", cpus=2, exclusive=True))], "j")
    assert not decision.placed
    assert decision.wait_reason == "this machine is held alone by run blocker"


def test_first_come_first_served_a_promised_host_is_not_taken() -> None:
    machine = usage(host())
    decision = decide(req(), [machine], "later", blocked={machine.host.id: "earlier-run"})
    assert not decision.placed
    assert decision.wait_reason == "this machine is promised to run earlier-run, which waits ahead"


def test_decide_knows_when_nothing_can_ever_fit() -> None:
    decision = decide(req(gpu="1"), [usage(host())], "j")
    assert decision.impossible_reason == "No offer has a GPU: this machine has 2 CPUs, 24GB memory, no GPU."


def test_no_offer_sentences_say_what_was_asked_and_what_hosts_have() -> None:
    h100s = host(gpus=[("NVIDIA H100 80GB HBM3", 79.6)] * 2)
    assert no_offer_message(req(gpu="A100"), [h100s]) == (
        "No offer has an A100 GPU: this machine has 2 CPUs, 24GB memory, 2xH100 (80GB)."
    )
    assert no_offer_message(req(gpu="H100:4"), [h100s]) == (
        "No offer has 4 H100 GPUs: this machine has 2 CPUs, 24GB memory, 2xH100 (80GB)."
    )
    assert no_offer_message(req(memory="64GB..", gpu="T4"), [host()]) == (
        "No offer has 64GB.. memory and a T4 GPU: this machine has 2 CPUs, 24GB memory, no GPU."
    )
    assert no_offer_message(req(max_price=0.5), [host(price=1)]).startswith("No offer costs at most $0.5/h:")
    assert no_offer_message(req(), []) == "No offer fits: no backend has any host."


def test_the_closest_hosts_are_named_first() -> None:
    small = host(id="s", name="small", backend="ssh", cpus=2, memory_gb=8)
    big = host(id="b", name="big", backend="ssh", cpus=64, memory_gb=512)
    message = no_offer_message(req(cpu="32", gpu="1"), [small, big])
    assert message.startswith("No offer has a GPU: host big has 64 CPUs")


def test_offers_cheapest_first_busy_and_unavailable_last() -> None:
    free = host(id="free", name="free", backend="ssh", price=2)
    cheap_busy = host(id="busy", name="busy", backend="ssh", price=1)
    down = host(
        id="down", name="down", backend="ssh", price=0.5, available=False, unavailable_reason="offline"
    )
    cheaper = host(id="cheaper", name="cheaper", backend="ssh", price=1.5)
    listed = offers(
        req(cpu="2"),
        [usage(down), usage(cheap_busy, held("x", cpus=2, exclusive=True)), usage(free), usage(cheaper)],
    )
    assert [(o.host.id, o.availability) for o in listed] == [
        ("cheaper", "available"),
        ("free", "available"),
        ("busy", "busy"),
        ("down", "unavailable"),
    ]
    assert listed[2].note == "host busy is held alone by run x"
    assert listed[3].note == "offline"


def test_offers_leave_out_hosts_that_never_fit() -> None:
    assert offers(req(gpu="1"), [usage(host())]) == []


def test_the_plan_says_how_a_task_shares_its_host() -> None:
    machine = host(cpus=8, memory_gb=64)
    assert placement_note(req(), machine) == (
        "Sets no cpu or memory: shares this machine with other tasks, uncapped."
    )
    assert placement_note(req(cpu="2", memory="4GB"), machine) == (
        "Reserves 2 CPUs and 4GB memory on this machine, capped at 2 CPUs and 4GB memory "
        "(enforced with cgroup v1)."
    )
    assert placement_note(req(cpu="1"), host(cpus=8, limits=None)) == (
        "Reserves 1 CPU on this machine, capped at 1 CPU "
        "(not enforced on this machine: its agent cannot use cgroups)."
    )
    assert placement_note(req(cpu="8", gpu="2"), machine) == (
        "Asks for all of this machine: runs alone there; it holds 2 GPUs of its own and sees only those."
    )
    assert "enforced by the container" in placement_note(req(memory="4GB", image=True), machine)


def test_ps_shows_what_a_task_holds() -> None:
    from dstack.server.scheduler.placement import describe_allocation

    machine = host(cpus=8, memory_gb=64, gpus=[("NVIDIA H100 80GB HBM3", 79.6)] * 2)
    assert describe_allocation(machine, Allocation(job_id="j")) == "8xCPU, 64GB (shared)"
    assert describe_allocation(machine, Allocation(job_id="j", cpus=2, memory_gb=0.5, gpus=(1,))) == (
        "2xCPU, 512MB, 1xH100 (80GB)"
    )
    assert describe_allocation(machine, Allocation(job_id="j", memory_gb=4)) == "8xCPU (shared), 4GB"
