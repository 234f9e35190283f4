-- Treatment protocols (cloud/protocols): every published version, signed, and the desired protocol of
-- each device. Reported state is devices.protocol_id / protocol_version (from the Status birth, via
-- ingest) and device_events (protocol_applied / protocol_rejected). Shared by both storage paths.

-- Tags live on devices (targets for protocols and firmware rollouts). The firmware migration may add the
-- same column: `if not exists` keeps both safe in either order.
alter table devices add column if not exists tags text[] not null default '{}';
create index if not exists devices_tags_idx on devices using gin (tags);
create index if not exists devices_model_idx on devices (model);

-- One row per published version. `document` is the protocol as JSON (for queries), `signed` the exact
-- SignedDocument sent to devices (what they verify); a version is immutable once published.
create table protocols (
    protocol_id  text not null,
    version      int not null check (version >= 1),
    document     jsonb not null,
    signed       jsonb not null,
    key_id       text not null,
    published_at timestamptz not null default now(),
    published_by text not null default '',
    primary key (protocol_id, version)
);

-- The desired protocol of each device (one row per device: the latest publication that targeted it).
-- `selector` says how the device was chosen (model=..., tag=..., device).
create table protocol_assignments (
    device_id    text primary key,
    protocol_id  text not null,
    version      int not null,
    selector     text not null,
    assigned_at  timestamptz not null default now(),
    assigned_by  text not null default '',
    foreign key (protocol_id, version) references protocols (protocol_id, version)
);
create index protocol_assignments_protocol_idx on protocol_assignments (protocol_id, version);
