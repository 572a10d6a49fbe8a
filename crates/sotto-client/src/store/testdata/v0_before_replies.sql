-- Test fixture: a profile's tables before replies (commit 4b49fbc): no
-- messages.reply_to, conversations.name_key, pending_commits.rejoin or
-- outbox.plaintext; no rejoins, known_devices, blocked, left_groups.
CREATE TABLE IF NOT EXISTS profile (
    k TEXT PRIMARY KEY,
    v BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    handle      TEXT PRIMARY KEY,
    account     BLOB NOT NULL,
    verified    INTEGER NOT NULL DEFAULT 0,   -- the user confirmed the safety number of `account`
    needs_confirm INTEGER NOT NULL DEFAULT 0, -- a verified contact's key changed
    previous_account BLOB
);
CREATE TABLE IF NOT EXISTS conversations (
    group_id    BLOB PRIMARY KEY,
    kind        TEXT NOT NULL,              -- 'direct' or 'group'
    name        TEXT NOT NULL,              -- peer handle(s), or the group's name
    state       TEXT NOT NULL DEFAULT 'active',  -- 'active', 'leaving', 'removed'
    created_ms  INTEGER NOT NULL,
    sent_since_update INTEGER NOT NULL DEFAULT 0,
    last_update_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              BLOB PRIMARY KEY,
    group_id        BLOB NOT NULL,
    sender_handle   TEXT NOT NULL,
    sender_account  BLOB NOT NULL,
    outgoing        INTEGER NOT NULL,
    body            TEXT NOT NULL,
    sent_at_ms      INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    shown           INTEGER NOT NULL DEFAULT 0,
    seq             INTEGER,
    expires_at_ms   INTEGER                  -- disappearing: deleted from this time on
);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages(expires_at_ms);
CREATE INDEX IF NOT EXISTS messages_unshown ON messages(shown, seq);
CREATE TABLE IF NOT EXISTS processed (
    sender  BLOB NOT NULL,
    msg_id  BLOB NOT NULL,
    PRIMARY KEY (sender, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attachments (
    msg_id      BLOB PRIMARY KEY,
    sender      TEXT NOT NULL,
    ref         BLOB NOT NULL,               -- postcard FileRef: blob id, key, nonce, hash, name, size
    state       TEXT NOT NULL DEFAULT 'pending',  -- 'pending', 'saved', 'refused', 'gone'
    path        TEXT
);
CREATE TABLE IF NOT EXISTS pending_commits (
    group_id    BLOB PRIMARY KEY,
    request     BLOB NOT NULL,               -- postcard CommitRequest, resent as is
    name        TEXT,                        -- for a creation: the conversation's name
    is_group    INTEGER
);
CREATE TABLE IF NOT EXISTS device_lists (
    account     BLOB PRIMARY KEY,
    version     INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    msg_id      BLOB PRIMARY KEY,
    group_id    BLOB NOT NULL,
    payload     BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    ttl_ms      INTEGER                      -- a disappearing message's server-side lifetime
);
