-- Sotto client profile schema, version 2: a full-text index of message
-- texts for local search (`Store::search`), inside the same SQLCipher
-- database, so its pages are encrypted like the messages themselves.
--
-- An FTS5 table with external content: it keeps only the index (terms
-- and the rowids of the `messages` rows that hold them), never a copy of
-- the text; the triggers below keep it in step with `messages.body`.
-- It follows `messages` by rowid: `messages` has no INTEGER PRIMARY KEY,
-- so a VACUUM may renumber its rows, and must be followed by a 'rebuild'
-- of this index (no code of the client runs VACUUM).
--
-- Tokenizer: unicode61 with remove_diacritics 2: words are split at
-- anything but letters and digits, folded to lower case and stripped of
-- diacritics ("Crème" is found by "creme"). A run of Chinese or Japanese
-- text without spaces is one word: it is found by its beginning only.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);

-- A deleted or changed message's terms are removed from the index's pages
-- in place, instead of being masked by delete markers in newer segments
-- (which repeat the terms) until a merge (FTS5 secure-delete, SQLite
-- 3.44 and later); `PRAGMA secure_delete` then zeroes the freed cells.
INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
-- An edit, or a deletion for everyone that blanks the text.
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;

-- The messages stored before this version.
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
