-- A stored application message no longer names its sender device (its
-- sender is authenticated inside MLS only): forget the senders of those
-- stored before. Kind 0 is an application message.
UPDATE messages SET sender = zeroblob(32) WHERE kind = 0;
