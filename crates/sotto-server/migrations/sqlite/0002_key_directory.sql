-- The key directory (akd): its tree nodes and its Azks by akd's binary id,
-- each handle's value states by (label, epoch), the epoch the stored Azks is
-- at (for the compare-and-set that keeps one writer per epoch), and the root
-- hash of every published epoch (for auditors).
CREATE TABLE directory_records (
    id     BLOB PRIMARY KEY,
    record BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE directory_states (
    label  BLOB NOT NULL,
    epoch  INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
) WITHOUT ROWID;

CREATE TABLE directory_epoch (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    epoch INTEGER NOT NULL
);

CREATE TABLE directory_roots (
    epoch INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
);
