-- Alerts (cloud/alerts): the alert lifecycle, its audit trail, the engine's durable state and the
-- delivery outboxes. Shared by both storage paths. Times are written by the engine from its injected
-- clock (never now()), so tests and replays can move time.

create type alert_severity as enum ('info', 'warning', 'alert', 'critical');  -- ordered: greatest() works

create table alerts (
    id               bigserial primary key,
    device_id        text not null,
    rule_id          text not null,
    episode_key      text not null,
    severity         alert_severity not null,
    state            text not null default 'open'
                     check (state in ('open', 'acknowledged', 'snoozed', 'resolved')),
    blocking         bool not null default false,       -- C1: sessions and protocol pushes blocked
    count            int not null default 1,            -- raises merged into this alert
    first_seen       timestamptz not null,
    last_seen        timestamptz not null,
    message          text not null,                     -- for ops
    notice_text      text not null,                     -- for the user's device
    evidence         jsonb not null default '{}',
    snoozed_until    timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    resolution       text
);
-- One open (not resolved) alert per device, rule and episode: the upsert's conflict target, so
-- concurrent engines merge into one row instead of duplicating it.
create unique index alerts_open_episode_uq on alerts (device_id, rule_id, episode_key)
    where state <> 'resolved';
create index alerts_state_idx on alerts (state, last_seen desc);
create index alerts_device_idx on alerts (device_id, last_seen desc);

-- Every transition with who and why (from_state null: the alert was raised).
create table alert_transitions (
    id         bigserial primary key,
    alert_id   bigint not null references alerts (id) on delete cascade,
    from_state text,
    to_state   text not null,
    severity   alert_severity not null,
    at         timestamptz not null,
    actor      text not null,                           -- 'rule', 'engine', or an operator's name
    reason     text not null
);
create index alert_transitions_alert_idx on alert_transitions (alert_id, id);

-- In-session rule state of each open session, written in the same transaction as the decisions it
-- caused, so a restarted engine resumes where the last commit left it.
create table alert_session_state (
    device_id     text not null,
    session_id    text not null,
    tz_offset_min int not null default 0,
    state         jsonb not null,                       -- cloud.alerts.insession.SessionState
    events        jsonb not null default '[]',          -- level/discomfort DeviceEvents of the session
    updated_at    timestamptz not null,
    primary key (device_id, session_id)
);

-- Ended sessions as the history rules read them (cloud.alerts.inputs.SessionRecord); the engine's own
-- copy, so it never waits for ingest (another subscription group) to commit the sessions table.
create table alert_history (
    device_id   text not null,
    session_id  text not null,
    started_at  timestamptz not null,
    record      jsonb not null,
    primary key (device_id, session_id)
);
create index alert_history_device_idx on alert_history (device_id, started_at);

create table alert_devices (
    device_id      text primary key,
    first_seen     timestamptz not null,                -- start of the O5 intensive phase
    baseline_level real                                 -- T2 baseline once the first 14 days are pruned
);

-- Device notices: written with the alert, published by the delivery worker once release_at has come
-- (quiet hours hold non-critical ones), marked sent after the broker's PUBACK; the device answers
-- NOTICE_SHOWN / NOTICE_ACK events.
create table notice_outbox (
    id          bigserial primary key,
    notice_id   text not null unique,
    alert_id    bigint references alerts (id) on delete cascade,
    device_id   text not null,
    severity    alert_severity not null,
    rule_id     text not null,
    text        text not null,
    created_at  timestamptz not null,
    release_at  timestamptz not null,
    expires_at  timestamptz,
    attempts    int not null default 0,
    sent_at     timestamptz,
    shown_at    timestamptz,
    acked_at    timestamptz
);
create index notice_outbox_due_idx on notice_outbox (release_at) where sent_at is null;

-- Desired safety gate per device (retained on mf/v1/<id>/down/gate); published when version moves.
create table safety_gates (
    device_id         text primary key,
    blocked           bool not null,
    reasons           text[] not null default '{}',
    text              text not null default '',
    version           bigint not null default 1,
    updated_at        timestamptz not null,
    published_version bigint not null default 0
);

-- On-call webhook: one row per alert event, retried with capped exponential backoff and jitter.
create table webhook_deliveries (
    id              bigserial primary key,
    alert_id        bigint references alerts (id) on delete cascade,
    event           text not null,                     -- opened, escalated, resolved
    payload         jsonb not null,
    created_at      timestamptz not null,
    attempts        int not null default 0,
    next_attempt_at timestamptz not null,
    last_error      text,
    delivered_at    timestamptz,
    gave_up_at      timestamptz
);
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at)
    where delivered_at is null and gave_up_at is null;
