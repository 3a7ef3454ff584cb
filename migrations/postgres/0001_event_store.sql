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
-- schemaVersion, payload, metadata}]}, each to a distinct stream) in the caller's transaction.
-- `expected` is -1 for any, otherwise the exact version (0: no stream). Each append either goes
-- in whole or reports a conflict with the stream's actual version; conflicts do not affect the
-- other appends. Set-based: one insert for all events, one upsert for all stream versions.
CREATE FUNCTION confab_append(batch JSONB)
RETURNS TABLE (idx INTEGER, ok BOOLEAN, stream_version BIGINT, first_pos BIGINT, last_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    head     BIGINT;
    new_head BIGINT;
BEGIN
    SELECT h.position INTO head FROM event_log_head h WHERE h.id FOR UPDATE;
    -- Two appends to one stream in one batch would both read the same current version; the
    -- caller never sends that, and UNIQUE (stream, version) would refuse the batch if it did.
    RETURN QUERY
    WITH req AS (
        SELECT (r.ord - 1)::INTEGER AS i, r.value->>'stream' AS s,
               (r.value->>'expected')::BIGINT AS want, r.value->'events' AS evs,
               jsonb_array_length(r.value->'events')::BIGINT AS n
        FROM jsonb_array_elements(batch) WITH ORDINALITY AS r(value, ord)
    ), cur AS (
        -- A scalar subquery keeps this an index lookup per append: the planner cannot know how
        -- few rows jsonb_array_elements yields and would otherwise hash-join the whole table.
        SELECT req.*,
               COALESCE((SELECT x.version FROM event_streams x WHERE x.stream = req.s), 0)::BIGINT
                   AS have
        FROM req
    ), good AS (
        SELECT cur.*, (head + SUM(cur.n) OVER (ORDER BY cur.i) - cur.n)::BIGINT AS base
        FROM cur WHERE cur.want < 0 OR cur.want = cur.have
    ), ins AS (
        INSERT INTO events (position, event_id, stream, version, event_type, schema_version,
                            payload, metadata, recorded_at)
        SELECT g.base + e.ord, (e.value->>'id')::UUID, g.s, g.have + e.ord, e.value->>'type',
               (e.value->>'schemaVersion')::INTEGER, e.value->'payload', e.value->'metadata',
               clock_timestamp()
        FROM good g, jsonb_array_elements(g.evs) WITH ORDINALITY AS e(value, ord)
    ), ups AS (
        INSERT INTO event_streams AS es (stream, version)
        SELECT g.s, g.have + g.n FROM good g
        ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version
    )
    SELECT c.i, g.i IS NOT NULL,
           CASE WHEN g.i IS NULL THEN c.have ELSE g.have + g.n END,
           g.base + 1, g.base + g.n
    FROM cur c LEFT JOIN good g ON g.i = c.i
    ORDER BY c.i;

    SELECT COALESCE(MAX(e.position), head) INTO new_head FROM events e WHERE e.position > head;
    IF new_head > head THEN
        UPDATE event_log_head SET position = new_head WHERE id;
        PERFORM pg_notify('confab_events', new_head::TEXT);
    END IF;
END
$$;
