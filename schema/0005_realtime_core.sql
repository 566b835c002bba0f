-- Realtime core (issues 10 and 11).

-- A call that has started is a match: its durable record from call:start until its history is
-- written, so a Redis that lost its data can have the call restored or finalised (never dropped).
CREATE TABLE live_calls (
    room_id        uuid PRIMARY KEY,
    session_id     uuid NOT NULL UNIQUE,
    caller_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    callee_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    started_at     timestamptz NOT NULL,
    agreed_seconds integer NOT NULL CHECK (agreed_seconds > 0),
    deadline_at    timestamptz NOT NULL
);

-- The deck's one query per request reads both report directions of the requester.
CREATE INDEX reports_reported_any_idx ON reports (reported_id);
