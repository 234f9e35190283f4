-- Time-series relations, plain PostgreSQL path: native range partitioning by the time column.
-- Keep the table definitions identical to 0002_timeseries.timescale.sql (tests compare the columns).
-- Partitions are cut per storage_policy.partition_interval (daily for samples and uplink_log, monthly for
-- sessions and device_events: see 0001_core.sql) and created ahead / dropped by retention by
-- microfleet_maintain(now) (called by `microfleet db maintain`); a DEFAULT partition takes any row that
-- has no partition yet, so an insert is never rejected, and maintain moves such rows into their
-- partition once it exists.

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
) partition by range (started_at);

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
) partition by range (ts);

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
) partition by range (at);

create table uplink_log (
    device_id text not null,
    seq       bigint not null,
    kind      text not null,
    sent_at   timestamptz not null,
    stored_at timestamptz not null default now(),
    consumer  text,
    primary key (device_id, seq, sent_at)
) partition by range (sent_at);

create table sessions_default partition of sessions default;
create table samples_default partition of samples default;
create table device_events_default partition of device_events default;
create table uplink_log_default partition of uplink_log default;

-- Range scans by time (rollups, fleet queries) on insert-ordered data: BRIN is tiny and cheap to maintain.
create index samples_ts_brin on samples using brin (ts);
create index uplink_log_sent_at_brin on uplink_log using brin (sent_at);
create index sessions_started_at_idx on sessions (started_at);
create index device_events_at_idx on device_events (at);

-- Creates the partitions covering [now - behind, now + ahead] (moving any matching rows out of the
-- DEFAULT partition first), drops partitions wholly older than the retention, deletes expired rows
-- from DEFAULT partitions and from unpartitioned relations with a retention. Idempotent.
-- Partitions are named <relation>_pYYYYMMDD after their (UTC) lower bound.
create function microfleet_maintain(
    p_now timestamptz,
    p_ahead interval default interval '7 days',
    p_behind interval default interval '14 days'
) returns table (action text, relation text, partition_name text, row_count bigint)
language plpgsql set timezone = 'UTC' as $fn$
declare
    pol record;
    unit text;
    lo timestamptz;
    hi timestamptz;
    part text;
    n bigint;
    child record;
begin
    for pol in select * from storage_policy sp order by sp.relation loop
        if to_regclass(quote_ident(pol.relation)) is null then
            continue;  -- created by a later migration
        end if;
        if pol.partition_interval is null then
            if pol.retention is not null then
                execute format('delete from %I where %I < $1', pol.relation, pol.time_column)
                    using p_now - pol.retention;
                get diagnostics n = row_count;
                if n > 0 then
                    action := 'deleted'; relation := pol.relation; partition_name := pol.relation; row_count := n;
                    return next;
                end if;
            end if;
            continue;
        end if;
        unit := case pol.partition_interval
                    when interval '1 day' then 'day' when interval '7 days' then 'week'
                    when interval '1 month' then 'month' end;
        if unit is null then
            raise exception 'storage_policy.partition_interval of % is %: use 1 day, 7 days or 1 month',
                pol.relation, pol.partition_interval;
        end if;
        lo := date_trunc(unit, p_now - p_behind);
        while lo < p_now + p_ahead loop
            hi := lo + pol.partition_interval;
            part := format('%s_p%s', pol.relation, to_char(lo, 'YYYYMMDD'));
            if to_regclass(quote_ident(part)) is null and (pol.retention is null or hi > p_now - pol.retention) then
                execute format('select count(*) from %I where %I >= $1 and %I < $2',
                               pol.relation || '_default', pol.time_column, pol.time_column)
                    into n using lo, hi;
                if n = 0 then
                    execute format('create table %I partition of %I for values from (%L) to (%L)',
                                   part, pol.relation, lo, hi);
                else
                    execute format('create table %I (like %I including all)', part, pol.relation);
                    execute format('with moved as (delete from %I where %I >= $1 and %I < $2 returning *) '
                                   'insert into %I select * from moved',
                                   pol.relation || '_default', pol.time_column, pol.time_column, part)
                        using lo, hi;
                    execute format('alter table %I attach partition %I for values from (%L) to (%L)',
                                   pol.relation, part, lo, hi);
                end if;
                action := 'created'; relation := pol.relation; partition_name := part; row_count := n;
                return next;
            end if;
            lo := hi;
        end loop;
        if pol.retention is not null then
            for child in
                select c.relname::text as name, to_timestamp(substring(c.relname from '_p(\d{8})$'), 'YYYYMMDD') as lower
                from pg_inherits i
                join pg_class c on c.oid = i.inhrelid
                where i.inhparent = pol.relation::regclass
                  and c.relname ~ ('^' || pol.relation || '_p\d{8}$')
                order by c.relname
            loop
                if child.lower + pol.partition_interval <= p_now - pol.retention then
                    execute format('drop table %I', child.name);
                    action := 'dropped'; relation := pol.relation; partition_name := child.name; row_count := null;
                    return next;
                end if;
            end loop;
            execute format('delete from %I where %I < $1', pol.relation || '_default', pol.time_column)
                using p_now - pol.retention;
            get diagnostics n = row_count;
            if n > 0 then
                action := 'deleted'; relation := pol.relation; partition_name := pol.relation || '_default'; row_count := n;
                return next;
            end if;
        end if;
    end loop;
end
$fn$;

-- usage_device_hourly does not exist yet: maintain the time-series tables now so that ingest finds its
-- partitions right after `migrate`.
select count(*) from microfleet_maintain(now());
