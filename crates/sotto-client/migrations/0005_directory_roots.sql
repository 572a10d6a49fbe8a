-- The key directory's roots this device verified itself, by epoch: what a
-- root another member carries in a message is compared with (a split view
-- is two roots for one epoch).
CREATE TABLE directory_roots (
    epoch INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
);
