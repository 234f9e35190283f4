-- Time-series relations, TimescaleDB path: hypertables, compressed and dropped by policies.
-- Keep the table definitions identical to 0002_timeseries.plain.sql (tests compare the columns).
create extension if not exists timescaledb;

create table sessions (
    device_id              text not null,
    session_id             text not null,
    started_at             timestamptz not null,
    ended_at               timestamptz,
    end_reason             text,
    level_start            smallint,
    level_max              smallint,
    tz_offset_min          int,
    protocol_id            text,
    protocol_version       int,
    fw_version             text,
    duration_on_s          real,
    duration_active_s      real,
    samples                int,
    level_changes_up       int,
    level_changes_down     int,
    boost_active_s         real,
    current_ua_mean        real,
    current_ua_p95         real,
    current_ua_max         real,
    voltage_v_p95          real,
    impedance_ohm_median   real,
    impedance_ohm_p95      real,
    impedance_ohm_max      real,
    contact_ok_ratio       real,
    impedance_spikes       int,
    charging_during_output bool,
    battery_pct_start      real,
    battery_pct_end        real,
    zones                  jsonb,
    received_at            timestamptz not null default now(),
    primary key (device_id, session_id, started_at)
);

create table samples (
    device_id     text not null,
    ts            timestamptz not null,
    session_id    text not null,
    current_ua    real,
    voltage_v     real,
    impedance_ohm real,
    contact       bool,
    zone          text,
    level         smallint,
    primary key (device_id, ts)
);

create table device_events (
    device_id   text not null,
    seq         bigint not null,
    at          timestamptz not null,
    event       text not null,
    session_id  text,
    level_from  smallint,
    level_to    smallint,
    value       double precision,
    detail      text,
    received_at timestamptz not null default now(),
    primary key (device_id, seq, at)
);

create table uplink_log (
    device_id text not null,
    seq       bigint not null,
    kind      text not null,
    sent_at   timestamptz not null,
    stored_at timestamptz not null default now(),
    consumer  text,
    primary key (device_id, seq, sent_at)
);

create index sessions_started_at_idx on sessions (started_at);
create index device_events_at_idx on device_events (at);

-- Chunk intervals come from storage_policy (0001_core.sql). samples: ~7,000 rows/s on average for a
-- million devices is ~100 M rows per 4 h, ~10 GB of heap plus ~6 GB of indexes (primary key and the
-- time index): TimescaleDB's sizing advice is that the chunks being written, with their indexes, fit
-- in about a quarter of memory, which 4 h chunks do on a 64 GB server (1 day would be ~100 GB). 90 days
-- of retention is then ~540 chunks, few enough for cheap planning; the 14 days before compression (late
-- data, see docs/data-model.md) are ~84 uncompressed chunks of which only the newest is hot.
-- uplink_log (~1,000 rows/s of small rows) fits a day per chunk; sessions and device events are small:
-- a week per chunk.
select create_hypertable('samples', by_range('ts',
    (select chunk_interval from storage_policy where relation = 'samples')));
select create_hypertable('uplink_log', by_range('sent_at',
    (select chunk_interval from storage_policy where relation = 'uplink_log')));
select create_hypertable('sessions', by_range('started_at',
    (select chunk_interval from storage_policy where relation = 'sessions')));
select create_hypertable('device_events', by_range('at',
    (select chunk_interval from storage_policy where relation = 'device_events')));

-- Compression: one segment per device (every query and the rollups are per device), rows ordered by time.
alter table samples set (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                         timescaledb.compress_orderby = 'ts desc');
alter table uplink_log set (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                            timescaledb.compress_orderby = 'sent_at desc, seq');
alter table sessions set (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                          timescaledb.compress_orderby = 'started_at desc, session_id');
alter table device_events set (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                               timescaledb.compress_orderby = 'at desc, seq');

-- Policies (background jobs): compress after compress_after (14 days: longer than the late horizon, so
-- ingest never writes into a compressed chunk), drop after the retention.
select add_compression_policy(relation::regclass, compress_after => compress_after)
from storage_policy where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
select add_retention_policy(relation::regclass, drop_after => retention)
from storage_policy where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
