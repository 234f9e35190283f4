-- The late horizon must cover the edge outbox's offline capacity (14 days) plus a margin (docs/data-model.md
-- "Late data"): ingest accepts data up to compress_after minus one day, so compress after 17 days
-- (horizon 16 days) instead of 14 (horizon 13 days: a device back after two weeks offline had its oldest
-- messages quarantined as too_late).
update storage_policy set compress_after = interval '17 days'
where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
select remove_compression_policy(relation::regclass, if_exists => true)
from storage_policy where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
select add_compression_policy(relation::regclass, compress_after => compress_after)
from storage_policy where relation in ('samples', 'uplink_log', 'sessions', 'device_events');
