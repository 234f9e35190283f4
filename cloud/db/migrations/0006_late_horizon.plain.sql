-- Plain path: nothing is compressed, the late horizon is the shortest retention of the tables ingest writes
-- (docs/data-model.md "Late data"). compress_after is kept equal on both paths (17 days) so that
-- storage_policy reads the same; it changes nothing here.
update storage_policy set compress_after = interval '17 days'
where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
