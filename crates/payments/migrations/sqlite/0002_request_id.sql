-- The id of the request that produced each event (X-Request-Id), carried to
-- its consumers so their log lines tie back to the request.
ALTER TABLE payments_outbox ADD COLUMN request_id TEXT;
