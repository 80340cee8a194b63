-- Which events each function has handled: a repeat delivery is skipped.
CREATE TABLE functions_inbox (
    consumer   TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
