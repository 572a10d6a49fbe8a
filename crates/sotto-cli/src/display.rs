//! Text from others made safe to show on a terminal: the one function
//! ([`visible`]) that every front end passes names, texts, file names and
//! error lines through before they reach a screen. Characters that would
//! steer the terminal or hide and reorder text (see
//! [`sotto_client::names::hides_text`]: escape sequences, `\r`, the bell,
//! C1 controls, bidirectional overrides) are shown as escapes instead:
//! `\e`, `\r`, `\n`, `\t`, `\xNN`, `\u{NNNN}`. JSON output is not passed
//! through it: it stays exact, and JSON escapes control characters itself.

use std::fmt::Write;

/// `s` with every character that would steer the terminal, hide or reorder
/// text written as a visible escape; everything else as it is. The result
/// is one line.
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !sotto_client::names::hides_text(c) {
            out.push(c);
            continue;
        }
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    out
}

/// Text that may span lines (a message): each line made [`visible`].
pub fn visible_lines(s: &str) -> Vec<String> {
    s.split('\n').map(visible).collect()
}

/// One message as the command line prints it, after its sender and any
/// conversation: `bob (reply to 1a2b3c4d): text (edited)  [👍 2 ❤️ 1]`,
/// a tombstone for a message deleted for everyone, and a plain word for a
/// kind this version cannot show. Every part from the network made
/// [`visible`].
pub fn message_line(m: &sotto_client::ReceivedMessage) -> String {
    let mut line = visible(&m.sender);
    if let Some(r) = m.reply_to {
        let _ = write!(line, " (reply to {})", &r.to_hex()[..8]);
    }
    line.push_str(": ");
    if m.deleted {
        line.push_str("(message deleted)");
    } else if m.unsupported {
        line.push_str("(unsupported message: a newer version of Sotto can show it)");
    } else {
        line.push_str(&visible(&m.text));
        if m.edited_at_ms.is_some() {
            line.push_str(" (edited)");
        }
    }
    if m.outgoing && !m.deleted && m.delivered_to > 0 {
        let _ = write!(line, " (delivered to {}", m.delivered_to);
        if m.read_by > 0 {
            let _ = write!(line, ", read by {}", m.read_by);
        }
        line.push(')');
    }
    if !m.reactions.is_empty() {
        let counts: Vec<String> = m
            .reactions
            .iter()
            .map(|(emoji, n)| format!("{} {n}", visible(emoji)))
            .collect();
        let _ = write!(line, "  [{}]", counts.join(" "));
    }
    line
}

/// A text that tries every trick this module defeats: set the terminal's
/// title, clear the screen, ring the bell, a CSI in its one-byte C1 form, a
/// bidirectional override, and `\r` to overwrite the line with what looks
/// like another sender's message. The tests of every front end (command
/// line, chat app) show it.
#[doc(hidden)]
pub const HOSTILE: &str = "hi\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{202e}gnp.exe\rbank: send money\x7f";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_made_visible_not_obeyed() {
        let shown = visible(HOSTILE);
        assert_eq!(
            shown,
            "hi\\e]0;pwned\\x07\\e[2J\\u{9b}31m\\u{202e}gnp.exe\\rbank: send money\\x7f"
        );
        assert!(!shown.chars().any(sotto_client::names::hides_text));
        assert_eq!(visible("plain ünïcode 😀 text"), "plain ünïcode 😀 text");
        assert_eq!(visible_lines("a\nb\x1bc"), ["a", "b\\ec"]);
        assert_eq!(visible("two\nlines"), "two\\nlines");
    }
}
