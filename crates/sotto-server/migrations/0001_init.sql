-- Sotto server schema for PostgreSQL, version 1. Mirrors the embedded SQLite
-- schema (src/store/sqlite.rs) with what concurrent nodes need: a per-device
-- mailbox head row whose lock orders that device's mailbox, and a count of
-- mailboxes still holding each message.

CREATE TABLE accounts (
    account     BYTEA PRIMARY KEY,
    handle      TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE devices (
    device      BYTEA PRIMARY KEY,
    account     BYTEA NOT NULL REFERENCES accounts(account),
    created_ms  BIGINT NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX devices_by_account ON devices(account);

CREATE TABLE invites (
    hash        BYTEA PRIMARY KEY,
    expires_ms  BIGINT NOT NULL
);

CREATE TABLE key_packages (
    hash        BYTEA PRIMARY KEY,
    device      BYTEA NOT NULL,
    data        BYTEA NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device);

CREATE TABLE last_resort_key_packages (
    device      BYTEA PRIMARY KEY,
    hash        BYTEA NOT NULL,
    data        BYTEA NOT NULL
);

CREATE TABLE groups (
    group_id    BYTEA PRIMARY KEY,
    epoch       BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id    BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    PRIMARY KEY (group_id, device)
);
CREATE INDEX group_members_by_device ON group_members(device);

CREATE TABLE messages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id    BYTEA NOT NULL,
    sender      BYTEA NOT NULL,
    msg_id      BYTEA NOT NULL,
    kind        SMALLINT NOT NULL,
    server_ms   BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    -- Mailboxes still holding the message; the ack that brings it to 0 deletes it.
    remaining   INTEGER NOT NULL,
    payload     BYTEA NOT NULL
);
CREATE INDEX messages_by_expiry ON messages(expires_ms);

-- One row per device with mail: the last sequence number handed out and how
-- many entries are waiting. Writers lock it, so a device's sequence numbers
-- become visible in the order they were handed out.
CREATE TABLE mailbox_heads (
    device      BYTEA PRIMARY KEY,
    last_seq    BIGINT NOT NULL,
    pending     BIGINT NOT NULL
);

CREATE TABLE mailbox (
    device      BYTEA NOT NULL,
    seq         BIGINT NOT NULL,
    message     BIGINT NOT NULL REFERENCES messages(id),
    PRIMARY KEY (device, seq)
);
CREATE INDEX mailbox_by_message ON mailbox(message);

CREATE TABLE device_lists (
    account     BYTEA PRIMARY KEY,
    version     BIGINT NOT NULL,
    data        BYTEA NOT NULL
);

CREATE TABLE kill_records (
    account     BYTEA PRIMARY KEY,
    version     BIGINT NOT NULL,
    data        BYTEA NOT NULL
);

CREATE TABLE blobs (
    blob        BYTEA PRIMARY KEY,
    sender      BYTEA NOT NULL,
    total       BIGINT NOT NULL,
    received    BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);

CREATE TABLE blob_recipients (
    blob        BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    PRIMARY KEY (blob, device)
);

CREATE TABLE seen_commits (
    key         BYTEA PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX seen_commits_by_expiry ON seen_commits(expires_ms);

CREATE TABLE seen_sends (
    key         BYTEA PRIMARY KEY,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX seen_sends_by_expiry ON seen_sends(expires_ms);
