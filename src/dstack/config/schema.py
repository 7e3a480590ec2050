"""JSON Schema of `*.dstack.yml` (type: task), for editors and documentation."""

from __future__ import annotations

from typing import Any

from dstack.config.task import TaskConfiguration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def configuration_json_schema() -> dict[str, Any]:
    """The schema of what users may write (the input forms, not the parsed models)."""
    schema = TaskConfiguration.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "dstack task configuration"}
