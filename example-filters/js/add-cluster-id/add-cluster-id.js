// Adds the cluster's identity to every event, as top-level fields
// (`set-fields`: the host splices them in, the event is not re-serialised).
// Same behaviour as ../../rust/add-cluster-id.
//
//   [[outputs.filters]]
//   wasm = "/filters/add-cluster-id.wasm"
//   config = { cluster = "shoot--prod--a", field = "clusterID", extra = { landscape = "eu1" } }
//
// `cluster` is required; `field` defaults to `clusterID`; `extra` adds more
// fields (any JSON value). Unknown keys are an error.
//
// Bindings (componentize-js): an imported interface is an ES module named
// after it; an exported interface is an exported object named after it
// (camelCase functions); `result<_, string>` is "return = ok, throw = err";
// variants are `{ tag, val }`; record fields are camelCase; `list<u8>` is a
// Uint8Array (a filter that reads an event decodes its spans of `batch.text`
// with a TextDecoder).

import { log } from 'audit-forwarder:filter/host@0.2.0';

const KNOWN = ['cluster', 'field', 'extra'];

// The one field set of every batch; set by `configure`.
let fields = [];
const SET_FIELDS = { tag: 'set-fields', val: 0 };

function isObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export const filter = {
  configure(config) {
    let c;
    try {
      c = JSON.parse(config);
    } catch (e) {
      throw `config: ${e.message}`;
    }
    const cluster = isObject(c) ? c.cluster : undefined;
    if (typeof cluster !== 'string' || cluster === '') {
      throw 'config: `cluster` (a non-empty string) is required';
    }
    const field = Object.hasOwn(c, 'field') ? c.field : 'clusterID';
    if (typeof field !== 'string') {
      throw 'config: `field` must be a string';
    }
    const set = [{ key: field, value: JSON.stringify(cluster) }];
    if (Object.hasOwn(c, 'extra')) {
      if (!isObject(c.extra)) {
        throw 'config: `extra` must be a table';
      }
      for (const [k, v] of Object.entries(c.extra)) {
        set.push({ key: k, value: JSON.stringify(v) });
      }
    }
    for (const k of Object.keys(c)) {
      if (!KNOWN.includes(k)) {
        throw `config: unknown key \`${k}\``;
      }
    }
    log('info', `adding ${field} = ${JSON.stringify(cluster)}`);
    fields = set;
    // Reads nothing of the events (not even their JSON).
    return { json: false };
  },

  filterBatch(batch) {
    return {
      verdicts: batch.events.map(() => SET_FIELDS),
      fieldSets: [fields],
    };
  },
};
