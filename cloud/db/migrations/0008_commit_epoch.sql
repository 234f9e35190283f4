-- The epoch of each device's outbox (SyncRequest.epoch: a random id made with the outbox). A sync with a
-- new epoch means the device's numbering restarted (a reset outbox): its mark restarts at the reported
-- floor. A sync whose numbers look older than the mark but carries the known epoch was only overtaken by
-- later messages through another consumer: it moves nothing back. '' = not known yet (or a device that
-- sends no epoch: no reset is detected for it).
alter table commit_marks add column epoch text not null default '';
