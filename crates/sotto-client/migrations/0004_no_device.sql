-- Sotto client profile schema, version 4: members with no device left
-- (issue 16, item 8). A device that obeys a wipe order proposes its leave
-- of every conversation marked as a wipe (`sotto_core::group::WIPED`);
-- the members note it, and when a commit takes the last device of that
-- account out of the group, the group shows the account as having no
-- device left rather than as gone.
CREATE TABLE IF NOT EXISTS wiped_devices (   -- members' devices whose leave said "wiped"
    group_id    BLOB NOT NULL,
    device      BLOB NOT NULL,
    account     BLOB NOT NULL,
    handle      TEXT NOT NULL,
    PRIMARY KEY (group_id, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS no_device_members ( -- accounts whose every device left a group wiped
    group_id    BLOB NOT NULL,
    account     BLOB NOT NULL,
    handle      TEXT NOT NULL,
    PRIMARY KEY (group_id, account)
) WITHOUT ROWID;
