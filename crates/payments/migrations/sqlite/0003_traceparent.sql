-- The W3C trace context (traceparent) of the span that produced each event,
-- carried to its consumers so that their work joins the producer's trace.
ALTER TABLE payments_outbox ADD COLUMN traceparent TEXT;
