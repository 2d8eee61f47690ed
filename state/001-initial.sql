-- postino state DB, schema version 1.
--
-- One database per job (an account pair). Side "a" is the source of a copy
-- (the first account of a mirror), side "b" the destination (the second).
-- Every message row is a pair: a_uid on side a, b_uid on side b.
-- Nothing here ever holds a password.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- The two accounts, by display URL (no secrets). A run against other
-- accounts than the ones recorded is refused.
CREATE TABLE account (
    side INTEGER PRIMARY KEY CHECK (side IN (0, 1)),
    url  TEXT NOT NULL
);

-- A folder on side a paired with a folder on side b, as the planner mapped
-- them. Names are wire names (modified UTF-7). Message rows refer to the
-- UIDVALIDITY recorded here: when a server's value changes, rows are
-- re-paired by content, never re-copied blindly.
CREATE TABLE folder_pair (
    id                INTEGER PRIMARY KEY,
    a_name            TEXT NOT NULL,
    b_name            TEXT NOT NULL,
    a_uidvalidity     INTEGER,
    b_uidvalidity     INTEGER,
    -- what the last complete pass saw; drives the fast path
    a_uidnext         INTEGER NOT NULL DEFAULT 0,
    a_highestmodseq   INTEGER NOT NULL DEFAULT 0,
    a_exists          INTEGER NOT NULL DEFAULT 0,
    b_uidnext         INTEGER NOT NULL DEFAULT 0,
    b_highestmodseq   INTEGER NOT NULL DEFAULT 0,
    b_exists          INTEGER NOT NULL DEFAULT 0,
    last_done         INTEGER,          -- unix time of the last complete pass
    UNIQUE (a_name, b_name)
);

-- Message states.
--   0 PENDING  the intent is recorded; the append may or may not have
--              happened. Resolved against the target before anything is
--              re-sent (see docs/design.md, "exactly once").
--   1 SYNCED   present on both sides; flags is the last synced value.
--   2 REFUSED  the target refused it; error holds the server's words.
--              Retried on the next run.
CREATE TABLE msg (
    id         INTEGER PRIMARY KEY,
    pair       INTEGER NOT NULL REFERENCES folder_pair(id) ON DELETE CASCADE,
    a_uid      INTEGER,        -- NULL: unknown on side a (re-pairing)
    a_uidl     TEXT,           -- POP3 source: the UIDL
    b_uid      INTEGER,        -- NULL: not (yet) known on side b
    state      INTEGER NOT NULL CHECK (state IN (0, 1, 2)),
    dir        INTEGER NOT NULL DEFAULT 0, -- 0: a->b, 1: b->a (mirror)
    size       INTEGER NOT NULL,
    msgid      TEXT,           -- Message-ID, for pairing without UIDs
    sha256     BLOB,           -- of the bytes appended
    flags      TEXT NOT NULL DEFAULT '',   -- canonical flag list (flags.h)
    idate      INTEGER,        -- INTERNALDATE, unix seconds
    t_uidnext  INTEGER,        -- target UIDNEXT (a lower bound) before append
    tries      INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    updated    INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
);
CREATE UNIQUE INDEX msg_a ON msg (pair, a_uid) WHERE a_uid IS NOT NULL;
CREATE UNIQUE INDEX msg_b ON msg (pair, b_uid) WHERE b_uid IS NOT NULL;
CREATE UNIQUE INDEX msg_uidl ON msg (pair, a_uidl) WHERE a_uidl IS NOT NULL;
CREATE INDEX msg_state ON msg (pair, state) WHERE state <> 1;
CREATE INDEX msg_content ON msg (pair, size, msgid);

-- One row per run, for `postino status` and reports.
CREATE TABLE run (
    id         INTEGER PRIMARY KEY,
    command    TEXT NOT NULL,
    started    INTEGER NOT NULL,
    ended      INTEGER,
    exit_code  INTEGER,
    copied     INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0,
    flags_set  INTEGER NOT NULL DEFAULT 0,
    refused    INTEGER NOT NULL DEFAULT 0,
    summary    TEXT
);
