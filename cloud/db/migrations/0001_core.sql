-- Core relations shared by both storage paths (docs/data-model.md).

create table devices (
    device_id        text primary key,
    model            text,
    hw_rev           text,
    fw_version       text,
    protocol_id      text,
    protocol_version int,
    state            text check (state in ('online', 'offline')),
    last_seen        timestamptz,
    last_seq         bigint,
    outbox_depth     int,
    outbox_dropped   int,
    battery_pct      real,
    tz_offset_min    int,
    first_seen       timestamptz not null default now(),
    updated_at       timestamptz
);

create table quarantine (
    id             bigserial primary key,
    received_at    timestamptz not null default now(),
    topic          text not null,
    payload        bytea not null,
    payload_sha256 bytea not null,
    reason         text not null,
    detail         text,
    consumer       text,
    unique (topic, payload_sha256)
);
create index quarantine_received_at_idx on quarantine (received_at);
create index quarantine_reason_idx on quarantine (reason, received_at);

-- How long each time-series relation keeps data and how it is cut, read by both paths: the TimescaleDB
-- migrations turn it into chunk intervals and policies once; on plain PostgreSQL `microfleet db maintain`
-- reads it on every run (an UPDATE here takes effect at the next run).
create table storage_policy (
    relation           text primary key,
    time_column        text not null,
    partition_interval interval,          -- plain path: 1 day or 1 month partitions (null: not partitioned)
    chunk_interval     interval,          -- TimescaleDB path: hypertable chunk interval
    retention          interval,          -- rows older than this are dropped (null: kept forever)
    compress_after     interval           -- TimescaleDB path: chunks older than this are compressed
);

insert into storage_policy values
    -- samples: ~7,000 rows/s (~600 M rows/day) for a million devices. Plain: one partition per day keeps a
    -- partition's indexes near memory size and makes retention a DROP TABLE. TimescaleDB: 4 h chunks, see
    -- 0002_timeseries.timescale.sql. Raw samples are kept 90 days; the usage_* rollups much longer.
    ('samples',             'ts',         interval '1 day',   interval '4 hours', interval '90 days',  interval '14 days'),
    -- uplink_log: one row per accepted message (~1,000/s): daily like samples, kept 30 days for loss and
    -- latency diagnostics.
    ('uplink_log',          'sent_at',    interval '1 day',   interval '1 day',   interval '30 days',  interval '14 days'),
    -- sessions (~1 M/day) and device events (fewer) are small rows: monthly partitions keep the partition
    -- count low for queries spanning months; kept 2 years (complaint handling and vigilance).
    ('sessions',            'started_at', interval '1 month', interval '7 days',  interval '730 days', interval '14 days'),
    ('device_events',       'at',         interval '1 month', interval '7 days',  interval '730 days', interval '14 days'),
    -- rollups: hourly per device kept ~13 months, the daily and fleet ones forever.
    ('usage_device_hourly', 'bucket',     null,               null,               interval '400 days', null);
