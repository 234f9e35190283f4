-- The alert engine's sweep of sliding rules (cloud/alerts/sweep.py): when it last looked at a device's
-- open O5/T2/T4 alerts with no new session, so several engines share the work and each device is looked
-- at once per sweep interval.
alter table alert_devices add column swept_at timestamptz;
