"""add-cluster-id in Python (componentize-py): the same filter as
example-filters/rust/add-cluster-id, to show the interface from Python.

Config: `cluster` (required), `field` (default "clusterID"), `extra` (a
table of more fields). Every event gets them with a `set-fields` verdict
naming the batch's one field set. (A filter that reads an event decodes
its spans of `batch.text`, e.g. `batch.text[s.start:s.start + s.len].decode()`.)
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

_fields: list[types.Field] = []


class Filter(exports.Filter):
    def configure(self, config: str) -> types.Needs:
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
        # Reads nothing of the events (not even their JSON).
        return types.Needs(0)

    def filter_batch(self, batch: types.Batch) -> types.BatchResult:
        verdict = types.Verdict_SetFields(0)
        return types.BatchResult([verdict] * len(batch.events), [_fields])
