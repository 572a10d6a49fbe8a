-- Test fixture: a server database's tables of protocol 2 (commit d6f00d2):
-- with device lists, kill records, blobs and commit ids, without the
-- groups' public state.
CREATE TABLE IF NOT EXISTS accounts (
    account     BLOB PRIMARY KEY,
    handle      TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device      BLOB PRIMARY KEY,
    account     BLOB NOT NULL REFERENCES accounts(account),
    created_ms  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_by_account ON devices(account);
CREATE TABLE IF NOT EXISTS invites (
    hash        BLOB PRIMARY KEY,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_packages (
    hash        BLOB PRIMARY KEY,
    device      BLOB NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS key_packages_by_device ON key_packages(device);
CREATE TABLE IF NOT EXISTS last_resort_key_packages (
    device      BLOB PRIMARY KEY,
    hash        BLOB NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    group_id    BLOB PRIMARY KEY,
    epoch       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_id    BLOB NOT NULL,
    device      BLOB NOT NULL,
    PRIMARY KEY (group_id, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    group_id    BLOB NOT NULL,
    sender      BLOB NOT NULL,
    msg_id      BLOB NOT NULL,
    kind        INTEGER NOT NULL,
    server_ms   INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages(expires_ms);
CREATE TABLE IF NOT EXISTS mailbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device      BLOB NOT NULL,
    message     INTEGER NOT NULL REFERENCES messages(id)
);
CREATE INDEX IF NOT EXISTS mailbox_by_device ON mailbox(device, seq);
CREATE INDEX IF NOT EXISTS mailbox_by_message ON mailbox(message);
CREATE TABLE IF NOT EXISTS device_lists (
    account     BLOB PRIMARY KEY,
    version     INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS kill_records (
    account     BLOB PRIMARY KEY,
    version     INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    blob        BLOB PRIMARY KEY,
    sender      BLOB NOT NULL,
    total       INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_recipients (
    blob        BLOB NOT NULL,
    device      BLOB NOT NULL,
    PRIMARY KEY (blob, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_commits (
    key         BLOB PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_sends (
    key         BLOB PRIMARY KEY,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;
