-- How fresh the usage_* rollups are (the usage API's `fresh_as_of`, the dashboards' freshness panels).
-- TimescaleDB path: the continuous aggregates are materialized only (materialized_only = true); a
-- refresh-policy run that started at S materializes the whole buckets before S - end_offset. So the
-- rollups are complete up to the oldest such bound over the grain's two aggregates (device and fleet);
-- null (unknown) until both policies have run, or when the last run failed. Late rows for older buckets wait for the next run.
create function usage_fresh_as_of(grain text default 'hour') returns timestamptz
language sql stable as $fn$
    select case when count(*) < 2 then null
                else min(date_trunc(case when grain = 'day' then 'day' else 'hour' end,
                                    s.last_run_started_at - (j.config ->> 'end_offset')::interval, 'UTC'))
           end
    from timescaledb_information.continuous_aggregates c
    join timescaledb_information.jobs j
      on j.hypertable_schema = c.materialization_hypertable_schema
     and j.hypertable_name = c.materialization_hypertable_name
     and j.proc_name = 'policy_refresh_continuous_aggregate'
    join timescaledb_information.job_stats s on s.job_id = j.job_id
    where c.view_name = any(case when grain = 'day' then array['usage_device_daily', 'usage_fleet_daily']
                                 else array['usage_device_hourly', 'usage_fleet_hourly'] end)
      and s.last_run_status = 'Success'
$fn$;
