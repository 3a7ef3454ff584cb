-- The event log. Positions are assigned by confab_append() while it holds the row lock on
-- event_log_head, so they are handed out in commit order: a reader that sees position N can
-- never later see a position below N appear (no sequence gaps). See eventstore/src/postgres.rs.
CREATE TABLE events (
    position       BIGINT      PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    stream         TEXT        NOT NULL,
    version        BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    payload        JSONB       NOT NULL,
    metadata       JSONB       NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (stream, version)
);

-- Current version of every stream, so an expected-version check is one index lookup.
CREATE TABLE event_streams (
    stream  TEXT   PRIMARY KEY,
    version BIGINT NOT NULL
);

-- The single row whose lock serialises position assignment.
CREATE TABLE event_log_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position BIGINT  NOT NULL
);
INSERT INTO event_log_head (id, position) VALUES (TRUE, 0);

-- Appends a batch of appends (a JSON array of {stream, expected, events:[{id, type,
-- schemaVersion, payload, metadata}]}) in the caller's transaction. `expected` is -1 for any,
-- otherwise the exact version (0: no stream). Each append either goes in whole or reports a
-- conflict with the stream's actual version; conflicts do not affect the other appends.
CREATE FUNCTION confab_append(batch JSONB)
RETURNS TABLE (idx INTEGER, ok BOOLEAN, stream_version BIGINT, first_pos BIGINT, last_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    head       BIGINT;
    start_head BIGINT;
    req        JSONB;
    cur        BIGINT;
    want       BIGINT;
    n          INTEGER;
    i          INTEGER := 0;
BEGIN
    SELECT h.position INTO head FROM event_log_head h WHERE h.id FOR UPDATE;
    start_head := head;
    FOR req IN SELECT value FROM jsonb_array_elements(batch) LOOP
        SELECT s.version INTO cur FROM event_streams s WHERE s.stream = req->>'stream';
        IF NOT FOUND THEN
            cur := 0;
        END IF;
        want := (req->>'expected')::BIGINT;
        idx := i;
        IF want >= 0 AND want <> cur THEN
            ok := FALSE; stream_version := cur; first_pos := NULL; last_pos := NULL;
        ELSE
            n := jsonb_array_length(req->'events');
            INSERT INTO events (position, event_id, stream, version, event_type, schema_version,
                                payload, metadata, recorded_at)
            SELECT head + e.ord, (e.value->>'id')::UUID, req->>'stream', cur + e.ord,
                   e.value->>'type', (e.value->>'schemaVersion')::INTEGER,
                   e.value->'payload', e.value->'metadata', clock_timestamp()
            FROM jsonb_array_elements(req->'events') WITH ORDINALITY AS e(value, ord);
            INSERT INTO event_streams AS s (stream, version) VALUES (req->>'stream', cur + n)
            ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version;
            ok := TRUE; stream_version := cur + n; first_pos := head + 1; last_pos := head + n;
            head := head + n;
        END IF;
        RETURN NEXT;
        i := i + 1;
    END LOOP;
    IF head > start_head THEN
        UPDATE event_log_head SET position = head WHERE id;
        PERFORM pg_notify('confab_events', head::TEXT);
    END IF;
END
$$;
