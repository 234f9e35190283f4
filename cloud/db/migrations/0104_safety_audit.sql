-- Safety audit trails (issue 14): who changed a device's alert-rule overrides, who pushed a protocol past
-- a blocked safety gate, and who read a device's health data. Append-only: nothing updates or deletes
-- these rows (retention is a decision for the data controller, not for this schema).

-- Every change of a device's overrides (cloud/alerts/overrides.py: `microfleet alerts override`,
-- PUT/DELETE /devices/{id}/alert-overrides). `weakened` lists the critical safety parameters the change
-- weakened against the device's model and protocol ([{"field": "t7.enabled", "from": true, "to": false}]);
-- a non-empty list needs an explicit confirmation with a reason, so `confirmed` is then true.
create table alert_override_changes (
    id         bigserial primary key,
    device_id  text not null,
    at         timestamptz not null default now(),
    by_whom    text not null,
    reason     text not null default '',
    before     jsonb not null default '{}',
    after      jsonb not null default '{}',
    weakened   jsonb not null default '[]',
    confirmed  bool not null default false
);
create index alert_override_changes_device_idx on alert_override_changes (device_id, at);

-- A protocol sent to a device whose safety gate was blocked (an open blocking contraindication), by an
-- explicit override with a reason (cloud/protocols/publish.py). Without one the device is skipped.
create table protocol_gate_overrides (
    id          bigserial primary key,
    device_id   text not null,
    protocol_id text not null,
    version     int not null,
    reason      text not null,
    by_whom     text not null,
    at          timestamptz not null default now()
);
create index protocol_gate_overrides_device_idx on protocol_gate_overrides (device_id, at);

-- Every read of a device's health data (the contraindication flags and notes of device_profiles) through
-- the API: which token (id and name), when, which device, by which route. cloud/api/README.md.
create table health_data_reads (
    id         bigserial primary key,
    at         timestamptz not null default now(),
    token_id   bigint not null,
    token_name text not null,
    device_id  text not null,
    route      text not null
);
create index health_data_reads_device_idx on health_data_reads (device_id, at);
create index health_data_reads_token_idx on health_data_reads (token_id, at);
