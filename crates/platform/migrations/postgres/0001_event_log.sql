-- The event log: every event a relay published, appended in the transaction that
-- marks its outbox row published (see agora_platform::bus::log). Append-only;
-- `seq` is the offset that listings page by and replays start from.
CREATE TABLE bus_event_log (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    payload      TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    logged_at    BIGINT NOT NULL
);
CREATE INDEX bus_event_log_kind_idx ON bus_event_log (kind, seq);
CREATE INDEX bus_event_log_aggregate_idx ON bus_event_log (aggregate_id, seq);
CREATE INDEX bus_event_log_occurred_idx ON bus_event_log (occurred_at);
