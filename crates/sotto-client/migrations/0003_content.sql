-- Typed content (issue 16): edits, deletion for everyone, reactions, and
-- kinds of a later version.
ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER;                 -- when its sender last edited it (this device's clock)
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;    -- deleted for everyone: a tombstone, body ''
ALTER TABLE messages ADD COLUMN unsupported INTEGER NOT NULL DEFAULT 0; -- a kind this version does not know
CREATE TABLE IF NOT EXISTS reactions (
    id              BLOB PRIMARY KEY,        -- the reaction's message id
    group_id        BLOB NOT NULL,
    target          BLOB NOT NULL,           -- the message reacted to
    reactor_account BLOB NOT NULL,
    reactor_handle  TEXT NOT NULL,
    emoji           TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    UNIQUE (group_id, target, reactor_account)
);
-- Receipts: a member's report that a device of theirs decrypted (1) or
-- showed (2) one of this account's messages; the highest status counts.
CREATE TABLE IF NOT EXISTS receipts (
    msg_id          BLOB NOT NULL,
    account         BLOB NOT NULL,
    status          INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (msg_id, account)
);
-- Receipts this device owes, sent as one message per conversation per batch.
CREATE TABLE IF NOT EXISTS receipts_out (
    group_id        BLOB NOT NULL,
    msg_id          BLOB NOT NULL,
    status          INTEGER NOT NULL,
    PRIMARY KEY (group_id, msg_id)
);
ALTER TABLE messages ADD COLUMN read_sent INTEGER NOT NULL DEFAULT 0;   -- reported read (or no read receipts wanted)
ALTER TABLE conversations ADD COLUMN read_receipts INTEGER;             -- NULL: the profile's setting; 0 off, 1 on
CREATE INDEX IF NOT EXISTS messages_deleted ON messages(deleted) WHERE deleted = 1;
CREATE INDEX IF NOT EXISTS messages_unread ON messages(group_id) WHERE outgoing = 0 AND read_sent = 0;
