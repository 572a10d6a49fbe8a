//! Local search of message texts through the FTS5 index of migration 2
//! (`messages_fts`, inside the encrypted database). What the user typed is
//! never FTS5 query syntax: [`SearchQuery`] quotes each word as a string,
//! so quotes, `AND`, `OR`, `NOT`, `NEAR(`, `*`, `^` and `column:` are only
//! text to look for. A message matches when it has every word; the last
//! word may be the beginning of one ("meet" finds "meeting"); a word with
//! punctuation inside ("e-mail") matches its parts side by side.

use sotto_proto::GroupId;

use super::{MESSAGE_COLUMNS, Store, StoredMessage, i, stored_messages};
use crate::ClientError;

/// The most messages one search returns (the newest that match).
pub const SEARCH_LIMIT: usize = 200;

/// Words to search for, as an FTS5 query that means only "these words".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    fts: String,
}

impl SearchQuery {
    /// The query for what a user typed: each whitespace-separated word
    /// must be in the message (in any order), the last one as a prefix.
    /// Case and diacritics don't matter. Fails on text with no word.
    pub fn new(text: &str) -> Result<Self, ClientError> {
        // Control characters (NUL would end the query early for FTS5)
        // separate words anyway.
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect();
        if words.is_empty() {
            return Err(ClientError::Invalid("nothing to search for".into()));
        }
        Ok(Self {
            fts: words.join(" ") + "*",
        })
    }

    /// The FTS5 query.
    pub fn as_fts(&self) -> &str {
        &self.fts
    }
}

impl Store {
    /// The stored messages that match `query`, newest first, at most
    /// [`SEARCH_LIMIT`]; in one conversation if `conversation` is given.
    /// Expired disappearing messages are deleted first and never found; a
    /// message whose text was deleted (blanked) has no words to match.
    pub fn search(
        &self,
        query: &SearchQuery,
        conversation: Option<&GroupId>,
        now_ms: u64,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        self.purge_expired(now_ms)?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_fts \
             JOIN messages m ON m.rowid = messages_fts.rowid \
             LEFT JOIN conversations c ON c.group_id = m.group_id \
             WHERE messages_fts MATCH ?1 \
             AND (m.expires_at_ms IS NULL OR m.expires_at_ms > ?2) \
             AND (?3 IS NULL OR m.group_id = ?3) \
             ORDER BY m.received_at_ms DESC, m.seq DESC LIMIT ?4"
        ))?;
        stored_messages(
            &mut stmt,
            rusqlite::params![
                query.as_fts(),
                i(now_ms),
                conversation.map(|g| &g.0[..]),
                SEARCH_LIMIT,
            ],
        )
    }
}
