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
