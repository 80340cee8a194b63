-- The W3C trace context (traceparent) of the span that produced each event.
ALTER TABLE bus_event_log ADD COLUMN traceparent TEXT;
