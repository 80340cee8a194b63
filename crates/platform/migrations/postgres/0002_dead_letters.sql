-- Dead letters of the in-process bus: an event a consumer failed to handle
-- `bus.max_attempts` times, kept for staff to inspect and re-drive (see
-- agora_platform::bus::dead). (On NATS they are in the stream `<stream>_DEAD`.)
CREATE TABLE bus_dead_letters (
    seq       BIGSERIAL PRIMARY KEY,
    consumer  TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    event     TEXT NOT NULL,
    error     TEXT NOT NULL,
    attempts  BIGINT NOT NULL,
    parked_at BIGINT NOT NULL,
    UNIQUE (consumer, event_id)
);
