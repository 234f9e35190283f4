-- `microfleet quarantine replay` (cloud/ingest/quarantine.py): when a row was last replayed and how it went
-- ('stored', or the reason it still fails with, and why in replay_detail).
alter table quarantine
    add column replayed_at   timestamptz,
    add column replay_result text,
    add column replay_detail text;
-- `microfleet quarantine list/replay --device D`: the device is the third level of the topic
create index quarantine_device_idx on quarantine (split_part(topic, '/', 3), received_at);
