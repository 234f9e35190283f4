-- Per-device overrides of the alert rules' parameters (cloud/alerts/params.py: the highest layer, above
-- the active protocol and the device model), e.g. {"o2": {"warn_daily_s": 900}} for a user whose
-- dermatologist asked for shorter days. Written by ops (`microfleet alerts overrides set`, the API),
-- validated before they are stored; read by the alert engine with each batch.
create table alert_rule_overrides (
    device_id  text primary key,
    overrides  jsonb not null check (jsonb_typeof(overrides) = 'object'),
    reason     text not null default '',
    updated_at timestamptz not null default now(),
    updated_by text not null default ''
);
