-- Wrong kill-code guesses, counted in the store so that every node shares
-- them and a restart keeps them: per key (SHA-256 of an account, or of a
-- source address prefix and an account), until the window ends.
CREATE TABLE kill_guesses (
    key         BYTEA PRIMARY KEY,
    failures    INTEGER NOT NULL,
    until_ms    BIGINT NOT NULL
);

-- Which account blocked which: a blocked account cannot claim the
-- blocker's KeyPackages.
CREATE TABLE blocks (
    account     BYTEA NOT NULL,
    blocked     BYTEA NOT NULL,
    PRIMARY KEY (account, blocked)
);

-- Devices that left a group alone and are no longer routed its messages,
-- until a commit's tree leaves them out or adds them again.
CREATE TABLE group_leaves (
    group_id    BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    PRIMARY KEY (group_id, device)
);
