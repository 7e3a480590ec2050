"""JSON Schema of `*.dstack.yml` files, for editors and documentation (`dstack schema`).

It is made from the same models that validate the files, so it can never allow a key they refuse or miss
one they take. With more than one configuration type registered (see `kinds`), it is one of them, chosen by
`type`.
"""

from __future__ import annotations

from typing import Any

from dstack.config import kinds

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def configuration_json_schema() -> dict[str, Any]:
    """The schema of what users may write (the input forms, not the parsed models)."""
    schemas = {
        kind: kinds.model_for(kind).model_json_schema(mode="validation") for kind in kinds.registered()
    }
    if len(schemas) == 1:
        ((kind, schema),) = schemas.items()
        return {"$schema": SCHEMA_DIALECT, **schema, "title": f"dstack {kind} configuration"}
    definitions: dict[str, Any] = {}
    options = []
    for schema in schemas.values():
        definitions.update(schema.pop("$defs", {}))
        options.append(schema)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "dstack configuration",
        "oneOf": options,
        "$defs": definitions,
    }
