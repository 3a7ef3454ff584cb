-- The id of what a request sent with an Idempotency-Key creates, fixed when the key is first
-- claimed: a request run again after its first run was cut short (the process died) creates
-- the same chat or message, found by that id, instead of a second one.
ALTER TABLE idempotency_keys ADD COLUMN resource_id TEXT;
