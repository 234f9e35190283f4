-- Usage rollups, TimescaleDB path: continuous aggregates with refresh policies (docs/data-model.md).
-- Same relation names and columns as 0003_rollups.plain.sql. The daily and fleet aggregates are
-- hierarchical (built on usage_device_hourly / usage_device_daily), so samples are read once:
-- `devices` of a fleet bucket counts the per-device rows of that bucket (= distinct devices), and the
-- averages are recombined exactly from current_ua_sum / current_ua_count (added to the documented
-- columns for that purpose). Buckets are UTC (time_bucket's default origin).

create materialized view usage_device_hourly with (timescaledb.continuous, timescaledb.materialized_only = true) as
select time_bucket(interval '1 hour', ts)       as bucket,
       device_id,
       count(*)                                 as samples,
       count(*) filter (where contact)          as active_s,
       avg(current_ua::double precision)        as current_ua_avg,
       max(current_ua)                          as current_ua_max,
       max(level)                               as level_max,
       sum(current_ua::double precision)        as current_ua_sum,
       count(current_ua)                        as current_ua_count
from samples
group by 1, 2
with no data;

create materialized view usage_device_daily with (timescaledb.continuous, timescaledb.materialized_only = true) as
select time_bucket(interval '1 day', bucket)                            as bucket,
       device_id,
       sum(samples)::bigint                                             as samples,
       sum(active_s)::bigint                                            as active_s,
       sum(current_ua_sum) / nullif(sum(current_ua_count), 0)           as current_ua_avg,
       max(current_ua_max)                                              as current_ua_max,
       max(level_max)                                                   as level_max,
       sum(current_ua_sum)                                              as current_ua_sum,
       sum(current_ua_count)::bigint                                    as current_ua_count
from usage_device_hourly
group by 1, 2
with no data;

create materialized view usage_fleet_hourly with (timescaledb.continuous, timescaledb.materialized_only = true) as
select time_bucket(interval '1 hour', bucket)                           as bucket,
       count(*)                                                         as devices,
       sum(samples)::bigint                                             as samples,
       sum(active_s)::bigint                                            as active_s,
       sum(current_ua_sum) / nullif(sum(current_ua_count), 0)           as current_ua_avg,
       max(current_ua_max)                                              as current_ua_max,
       sum(current_ua_sum)                                              as current_ua_sum,
       sum(current_ua_count)::bigint                                    as current_ua_count
from usage_device_hourly
group by 1
with no data;

create materialized view usage_fleet_daily with (timescaledb.continuous, timescaledb.materialized_only = true) as
select time_bucket(interval '1 day', bucket)                            as bucket,
       count(*)                                                         as devices,
       sum(samples)::bigint                                             as samples,
       sum(active_s)::bigint                                            as active_s,
       sum(current_ua_sum) / nullif(sum(current_ua_count), 0)           as current_ua_avg,
       max(current_ua_max)                                              as current_ua_max,
       sum(current_ua_sum)                                              as current_ua_sum,
       sum(current_ua_count)::bigint                                    as current_ua_count
from usage_device_daily
group by 1
with no data;

-- Refresh windows reach back past the late horizon (data older than compress_after is quarantined, never
-- stored), so late samples are rolled up; only invalidated ranges are recomputed, so a wide window costs
-- little. end_offset leaves the bucket still being written to the next run.
select add_continuous_aggregate_policy('usage_device_hourly', start_offset => interval '15 days',
    end_offset => interval '1 hour', schedule_interval => interval '15 minutes');
select add_continuous_aggregate_policy('usage_fleet_hourly', start_offset => interval '15 days',
    end_offset => interval '1 hour', schedule_interval => interval '15 minutes');
select add_continuous_aggregate_policy('usage_device_daily', start_offset => interval '16 days',
    end_offset => interval '1 hour', schedule_interval => interval '1 hour');
select add_continuous_aggregate_policy('usage_fleet_daily', start_offset => interval '16 days',
    end_offset => interval '1 hour', schedule_interval => interval '1 hour');

select add_retention_policy('usage_device_hourly',
    drop_after => (select retention from storage_policy where relation = 'usage_device_hourly'));
