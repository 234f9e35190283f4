-- The health-data grant of an API token (issue 14): reading a device's contraindication flags and notes
-- needs it, whatever the role (viewer < operator < admin do not imply it). Granted at creation
-- (`microfleet api token create --health-data`, POST /tokens {"health_data": true}); every read is
-- recorded in health_data_reads (0104_safety_audit.sql). After 0300_api.sql, which creates api_tokens.
alter table api_tokens add column health_data bool not null default false;
