-- A delivery is processed once per (dedup scope, message id): the scope is
-- its sender device, or for an application message, whose envelope no
-- longer names its sender, its group (`sotto_proto::dedup_scope`).
ALTER TABLE processed RENAME COLUMN sender TO scope;
