-- Operators and auditors (issue 15).
--
-- Each projection's checkpoint records the version of the projection that wrote its read
-- model. A release whose projection has another version rebuilds that read model from the
-- log at start-up; the rows written before this migration are version 1.
ALTER TABLE projection_checkpoints ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- The credit history's operator adjustments: who made each one (the reason is its
-- reference).
ALTER TABLE credit_transactions ADD COLUMN actor TEXT;

-- Events a projection could not apply (poison events), after its retries:
-- `parked` (CONFAB_PROJECTION_ON_ERROR=park: the projection went on past it) or `halted`
-- (the default: the projection stopped, with every event up to `after` applied, until an
-- operator retries or skips it). A row leaves when the event is applied or skipped.
CREATE TABLE projection_parked (
    projection TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    event_id   BLOB    NOT NULL,
    event_type TEXT    NOT NULL,
    stream     TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    after      INTEGER NOT NULL,
    error      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    parked_at  TEXT    NOT NULL,
    PRIMARY KEY (projection, position)
);
