-- Version 2: mailboxes are also capped by the payload bytes they hold, so
-- each head row counts them beside the entries.
ALTER TABLE mailbox_heads ADD COLUMN pending_bytes BIGINT NOT NULL DEFAULT 0;

UPDATE mailbox_heads h SET pending_bytes = s.bytes
FROM (
    SELECT b.device, sum(length(m.payload))::int8 AS bytes
    FROM mailbox b JOIN messages m ON m.id = b.message
    GROUP BY b.device
) s
WHERE h.device = s.device;
