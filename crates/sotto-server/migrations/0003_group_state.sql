-- Version 3: the server checks commits, so it keeps each group's public
-- MLS state (ratchet tree, group context: opaque bytes of sotto-core's
-- `public` module), the GroupInfo of its current epoch (for devices that
-- rejoin), and the proposals accepted in that epoch.
CREATE TABLE group_states (
    group_id    BYTEA PRIMARY KEY,
    state       BYTEA NOT NULL,
    group_info  BYTEA NOT NULL
);

CREATE TABLE group_proposals (
    id          BIGSERIAL PRIMARY KEY,
    group_id    BYTEA NOT NULL,
    epoch       BIGINT NOT NULL,
    data        BYTEA NOT NULL
);
CREATE INDEX group_proposals_by_group ON group_proposals(group_id, id);
