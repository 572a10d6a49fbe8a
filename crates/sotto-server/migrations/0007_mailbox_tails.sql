-- Acks and expiry no longer write mailbox_heads, whose rows every send to
-- the mailbox locks: at 8,000 devices on two nodes, ack batches holding
-- those locks were half of what sends waited for. What leaves a mailbox is
-- counted in a table of its own, written by acks and expiry only, and read
-- (not locked) by sends:
--   entries waiting = mailbox_heads.last_seq - mailbox_tails.removed
--   bytes waiting   = mailbox_heads.posted_bytes - mailbox_tails.removed_bytes
-- Both tail counters only grow, so a send that reads them a moment late
-- counts a mailbox fuller than it is, never emptier.
CREATE TABLE mailbox_tails (
    device          BYTEA PRIMARY KEY,
    removed         BIGINT NOT NULL,
    removed_bytes   BIGINT NOT NULL
);
INSERT INTO mailbox_tails (device, removed, removed_bytes)
    SELECT device, last_seq - pending, 0 FROM mailbox_heads;
ALTER TABLE mailbox_heads DROP COLUMN pending;
ALTER TABLE mailbox_heads RENAME COLUMN pending_bytes TO posted_bytes;
