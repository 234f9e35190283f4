-- Firmware over the air (cloud/ota): releases, rollouts, one job per device and rollout, the device's
-- reports. Shared by both storage paths (small tables; ota_reports grows ~10 rows per device and update).

create table firmware_releases (
    release_id      bigserial primary key,
    version         text not null unique,
    version_code    int not null check (version_code >= 0),   -- anti-rollback number
    models          text[] not null,
    hw_revs         text[] not null default '{}',             -- empty: every revision
    sha256          text not null,
    size            bigint not null check (size > 0),
    artifact        text not null unique,                     -- file name under MICROFLEET_ARTIFACT_DIR
    min_battery_pct real not null,
    manifest        jsonb not null,                           -- the SignedDocument devices verify
    created_at      timestamptz not null default now()
);

-- Targeting by tag uses devices.tags (text[], GIN-indexed; 0400_protocols.sql), as protocols do.

create table ota_rollouts (
    rollout_id     bigserial primary key,
    release_id     bigint not null references firmware_releases,
    plan           jsonb not null,                 -- cloud.ota.rollout.RolloutPlan
    status         text not null check (status in ('running', 'paused', 'cancelling', 'cancelled', 'completed')),
    wave           int not null default 0,         -- the wave being rolled out
    gate_met_at    timestamptz,                    -- when the current wave met its success gate (soak start)
    error_baseline jsonb not null default '{}',    -- wave -> errors acknowledged by a resume
    force_cancel   bool not null default false,
    status_reason  text,
    rollback_of    bigint references ota_rollouts,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

-- state: pending (not sent yet), sent (retained job published), then what the device reported
-- (queued, deferred, downloading, verifying, installing, rebooting, health_check, succeeded, failed,
-- rolled_back, cancelled).
create table ota_device_jobs (
    job_id      text primary key,
    rollout_id  bigint not null references ota_rollouts,
    device_id   text not null,
    wave        int not null,
    state       text not null,
    reason      text,
    retryable   bool,
    progress    real,
    fw_version  text,
    sent_at     timestamptz,
    cancel_sent_at timestamptz,
    report_ts   timestamptz,                      -- ts and seq of the report the state comes from
    report_seq  bigint,
    updated_at  timestamptz not null default now(),
    unique (rollout_id, device_id)
);
create index ota_device_jobs_wave_idx on ota_device_jobs (rollout_id, wave, state);
create index ota_device_jobs_device_idx on ota_device_jobs (device_id);

create table ota_reports (
    device_id      text not null,
    seq            bigint not null,
    ts             timestamptz not null,
    job_id         text not null,
    rollout_id     bigint not null,
    state          text not null,
    fw_version     text,
    target_version text,
    progress       real,
    reason         text,
    retryable      bool,
    received_at    timestamptz not null default now(),
    primary key (device_id, seq, ts)
);
create index ota_reports_job_idx on ota_reports (job_id, ts);
