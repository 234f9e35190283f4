-- What the alert engine could not evaluate (cloud/alerts/refused.py): a message the contract refuses,
-- one whose values PostgreSQL refuses (e.g. a NUL character in a string, which jsonb and text cannot
-- hold), or one whose evaluation failed. Recorded in the batch's transaction and acknowledged, so one
-- message never stops the engine. The same shape as ingest's quarantine (which keeps the bytes for a
-- replay); this table says what the engine skipped and why. Both storage paths.
create table alert_refused (
    id             bigserial primary key,
    refused_at     timestamptz not null,
    topic          text not null,
    payload        bytea not null,
    payload_sha256 bytea not null,
    reason         text not null,                       -- a contract Reason, or db_refused / evaluation_failed / unstorable
    detail         text not null default '',            -- sanitised: no NUL, no lone surrogate, bounded
    consumer       text not null default '',
    unique (topic, payload_sha256)
);
create index alert_refused_at_idx on alert_refused (refused_at);
create index alert_refused_reason_idx on alert_refused (reason, refused_at);
