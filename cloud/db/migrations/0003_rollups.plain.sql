-- Usage rollups, plain PostgreSQL path: tables with the same names and columns as the continuous
-- aggregates of 0003_rollups.timescale.sql, kept current by cloud.db.rollups (`microfleet db maintain`).
-- Buckets are UTC. current_ua_sum / current_ua_count (added to the documented columns) let the daily and
-- fleet rollups recombine averages exactly.

create table usage_device_hourly (
    bucket           timestamptz not null,
    device_id        text not null,
    samples          bigint not null,
    active_s         bigint not null,
    current_ua_avg   double precision,
    current_ua_max   real,
    level_max        smallint,
    current_ua_sum   double precision,
    current_ua_count bigint not null,
    primary key (device_id, bucket)
);
create index usage_device_hourly_bucket_idx on usage_device_hourly (bucket);

create table usage_device_daily (like usage_device_hourly including all);

create table usage_fleet_hourly (
    bucket           timestamptz primary key,
    devices          bigint not null,
    samples          bigint not null,
    active_s         bigint not null,
    current_ua_avg   double precision,
    current_ua_max   real,
    current_ua_sum   double precision,
    current_ua_count bigint not null
);

create table usage_fleet_daily (like usage_fleet_hourly including all);

-- The invalidation log, as TimescaleDB keeps one for continuous aggregates: every INSERT (or COPY) into
-- samples records the UTC hours it touched, in the same transaction as the rows, so a refresh that
-- consumes these markers sees exactly the data committed with them; rows committed later leave their
-- markers for the next refresh. No unique key on purpose: concurrent ingest transactions touching the
-- same hour never wait for each other; the refresh deduplicates.
create table rollup_pending (
    bucket      timestamptz not null,
    recorded_at timestamptz not null default now()
);

create function rollup_pending_record() returns trigger
language plpgsql as $fn$
begin
    insert into rollup_pending (bucket)
    select distinct date_trunc('hour', ts, 'UTC') from new_samples;
    return null;
end
$fn$;

create trigger samples_rollup_pending
after insert on samples
referencing new table as new_samples
for each statement execute function rollup_pending_record();
