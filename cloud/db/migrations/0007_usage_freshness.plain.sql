-- How fresh the usage_* rollups are (the usage API's `fresh_as_of`, the dashboards' freshness panels).
-- Plain path: the samples trigger records every hour it touched in rollup_pending in the same transaction
-- as the rows, and a refresh consumes those markers. So with no marker left every committed sample is
-- rolled up (fresh as of now); otherwise buckets before the oldest marked hour are complete and that hour
-- and later ones may lag until the next `microfleet db maintain` (ingest runs it every few minutes).
-- The grain ('hour' or 'day') does not matter here: one refresh recomputes both.
create function usage_fresh_as_of(grain text default 'hour') returns timestamptz
language sql stable as $fn$
    select coalesce(
        (select case when grain = 'day' then date_trunc('day', min(bucket), 'UTC') else min(bucket) end
         from rollup_pending),
        now())
$fn$;
