-- The end-to-end acknowledgement (cloud/ingest/marks.py, docs/data-model.md "Commit marks").
-- commit_marks: per device, `through` = the highest seq such that every seq up to it is committed (stored,
-- or quarantined with its reason) or lies below a floor the device reported in a SyncRequest; the mark
-- loop sends it to the device as a CommitMark once `sent_through` lags (after a delay, a count, or at once
-- when `requested`). Written in the same transaction as each ingest batch, under a row lock taken in
-- device_id order.
create table commit_marks (
    device_id    text primary key,
    through      bigint not null default -1,
    sent_through bigint not null default -1,
    requested    boolean not null default false,
    advanced_at  timestamptz,          -- the first advance not yet sent
    sent_at      timestamptz
);
-- the mark loop's scan (marks.claim_due): only rows with something to send are in it
create index commit_marks_due_idx on commit_marks (advanced_at) where requested or through > sent_through;

-- Receipts ABOVE the mark only (a gap below them is still open): deleted as soon as the mark passes them,
-- so the table stays small (empty for a device whose messages arrive in order).
create table commit_receipts (
    device_id text not null,
    seq       bigint not null,
    primary key (device_id, seq)
);
