-- A stored application message no longer names its sender device (its
-- sender is authenticated inside MLS only): forget the senders of those
-- stored before. Kind 0 is an application message.
UPDATE messages SET sender = decode(repeat('00', 32), 'hex') WHERE kind = 0;
