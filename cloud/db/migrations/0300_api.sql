-- HTTP API (cloud/api): device profiles with contraindication flags, and API tokens. Shared by both
-- storage paths.

-- One row per registered device: what the user declared at registration (not telemetry). No foreign key
-- to devices on purpose: ingest may see a device before it is registered and the other way round, and
-- neither side must wait for the other. Read by the alerts engine's contraindication gate (C1).
create table device_profiles (
    device_id              text primary key,
    tz_name                text,              -- IANA zone, e.g. Europe/Paris (the user's local day)
    tz_offset_min          int check (tz_offset_min between -720 and 840),
    pregnancy              bool not null default false,
    implanted_electronics  bool not null default false,  -- pacemaker, defibrillator, neurostimulator
    epilepsy               bool not null default false,
    active_cancer          bool not null default false,
    under_18               bool not null default false,
    recent_surgery         bool not null default false,
    metal_implants         bool not null default false,
    thyroid_condition      bool not null default false,
    neck_contraindication  bool not null default false,
    diabetes               bool not null default false,
    birth_date             date,
    last_surgery_on        date,
    notes                  text,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    updated_by             text
);

-- API tokens: only the SHA-256 of a token is stored; the token itself is shown once at creation.
create table api_tokens (
    id           bigserial primary key,
    token_sha256 bytea not null unique,
    name         text not null,
    role         text not null check (role in ('viewer', 'operator', 'admin')),
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz
);
