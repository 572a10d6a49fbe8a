-- The key directory (akd): its tree nodes and its Azks by akd's binary id,
-- each handle's value states by (label, epoch), the epoch the stored Azks is
-- at (for the compare-and-set that keeps one writer per epoch), and the root
-- hash of every published epoch (for auditors).
CREATE TABLE directory_records (
    id     BYTEA PRIMARY KEY,
    record BYTEA NOT NULL
);

CREATE TABLE directory_states (
    label  BYTEA NOT NULL,
    epoch  BIGINT NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (label, epoch)
);

CREATE TABLE directory_epoch (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    epoch BIGINT NOT NULL
);

CREATE TABLE directory_roots (
    epoch BIGINT PRIMARY KEY,
    hash  BYTEA NOT NULL
);
