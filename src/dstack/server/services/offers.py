"""Offers for resource requirements given as `dstack offer`'s flags, without running anything.

The server turns the flags into a run spec the way `dstack run` would, so `dstack offer`, the web UI and
any API user get the same answer as a plan.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dstack.config import ConfigError, parse_configuration, parse_overrides, resolve_profile
from dstack.server.context import ServerContext
from dstack.server.schemas import RunSpec
from dstack.server.services import plans
from dstack.server.services.errors import ServiceError
from dstack.server.services.projects import Project


class OfferQuery(BaseModel):
    """The resource flags of `dstack offer`, as the CLI spells them (e.g. gpu "A100:80GB:2")."""

    model_config = ConfigDict(extra="forbid")

    gpu: str | None = Field(default=None, max_length=200)
    cpu: str | None = Field(default=None, max_length=200)
    memory: str | None = Field(default=None, max_length=200)
    disk: str | None = Field(default=None, max_length=200)
    backends: list[str] | None = Field(default=None, max_length=20)
    max_price: float | None = None
    image: bool = False  # only offers that can run containers


def spec_for(query: OfferQuery) -> RunSpec:
    text = "type: task\nimage: offer\n" if query.image else "type: task\ncommands: [':']\n"
    try:
        configuration = parse_configuration(text, filename="offer.dstack.yml")
        overrides = parse_overrides(
            gpu=_blank_none(query.gpu),
            cpu=_blank_none(query.cpu),
            memory=_blank_none(query.memory),
            disk=_blank_none(query.disk),
            backends=query.backends or None,
            max_price=query.max_price,
        )
        profile = resolve_profile(configuration, None, overrides)
    except ConfigError as e:
        raise ServiceError(str(e)) from e
    return RunSpec(
        configuration=configuration.model_dump(mode="json"),
        profile=profile.model_dump(mode="json"),
        commands=[":"],
        image="offer" if query.image else None,
    )


async def offers(ctx: ServerContext, project: Project, query: OfferQuery) -> dict[str, Any]:
    """The plan's answer: requirements, offers (cheapest first, busy and unavailable last), why none fits."""
    plan = await plans.plan(ctx, project, spec_for(query))
    plan.pop("run_name", None)  # nothing will run: no name was taken
    return plan


def _blank_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None
