"""add-cluster-id in Python (componentize-py): the same filter as
example-filters/rust/add-cluster-id, to show the interface from Python.

Config: `cluster` (required), `field` (default "clusterID"), `extra` (a
table of more fields). Every event gets them with a `set-fields` verdict.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

_fields: list[types.Field] = []


class Filter(exports.Filter):
    def configure(self, config: str) -> None:
        global _fields
        try:
            c = json.loads(config)
        except ValueError as e:
            raise Err(f"config: {e}")
        unknown = sorted(set(c) - {"cluster", "field", "extra"})
        if unknown:
            raise Err(f"config: unknown key `{unknown[0]}`")
        cluster = c.get("cluster")
        if not isinstance(cluster, str) or not cluster:
            raise Err("config: `cluster` (a non-empty string) is required")
        field = c.get("field", "clusterID")
        if not isinstance(field, str):
            raise Err("config: `field` must be a string")
        extra = c.get("extra", {})
        if not isinstance(extra, dict):
            raise Err("config: `extra` must be a table")
        fields = [types.Field(field, json.dumps(cluster))]
        fields += [types.Field(k, json.dumps(v)) for k, v in extra.items()]
        _fields = fields
        host.log(types.LogLevel.INFO, f"adding {field} = {cluster!r}")

    def filter_batch(self, events: list[types.Event]) -> list[types.Verdict]:
        verdict = types.Verdict_SetFields(_fields)
        return [verdict for _ in events]
