//! Names and texts chosen by others: which characters hide text or reorder
//! it ([`hides_text`]), and the rule for group names ([`group_name`]), which
//! whoever creates or renames a group picks, a stranger maybe. Front ends
//! that print such text make these characters visible instead (the `sotto`
//! binary's `display` module).

/// Whether `c` changes how the text around it is shown instead of being
/// shown itself: control characters (C0, DEL, C1: escape sequences start
/// with one, `\r` rewrites a line), bidirectional overrides, embeddings,
/// isolates and marks (a `U+202E` makes `exe.pdf` read `fdp.exe`), and the
/// line and paragraph separators.
pub fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Characters that show as nothing: a name with one looks like the name
/// without it. (Zero-width joiners stay allowed: emoji sequences need them.)
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}' | '\u{115f}' | '\u{1160}' | '\u{180e}' | '\u{200b}' | '\u{2060}'
            ..='\u{2064}' | '\u{3164}' | '\u{feff}' | '\u{ffa0}'
    )
}

/// The longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 64;

/// A group name as it may be used: trimmed, 1 to
/// [`MAX_GROUP_NAME_BYTES`] bytes, not starting with `#` or `@` (which
/// name a group by id and a person by handle), without characters that
/// hide or reorder text or show as nothing. `None` if it breaks the rule.
pub fn group_name(name: &str) -> Option<&str> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= MAX_GROUP_NAME_BYTES
        && !name.starts_with(['#', '@'])
        && !name.chars().any(|c| hides_text(c) || invisible(c));
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_refuse_overrides_controls_and_invisible_characters() {
        assert_eq!(group_name("  ops team "), Some("ops team"));
        assert_eq!(
            group_name("👨\u{200d}👩\u{200d}👧 family"),
            Some("👨\u{200d}👩\u{200d}👧 family")
        );
        for bad in [
            "",
            "   ",
            "#abc",
            "@ann",
            "ann\u{202e}",
            "\u{2067}ann",
            "a\u{200f}b",
            "a\x1b[2Jb",
            "a\rb",
            "a\u{9b}b",
            "an\u{200b}n",
            "ann\u{feff}",
            "a\u{2028}b",
            &"x".repeat(65),
        ] {
            assert_eq!(group_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn what_hides_text() {
        for c in [
            '\x1b', '\r', '\n', '\x07', '\x7f', '\u{85}', '\u{9b}', '\u{202e}', '\u{2066}',
            '\u{061c}',
        ] {
            assert!(hides_text(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '中', '\u{200d}', '😀'] {
            assert!(!hides_text(c), "{c:?}");
        }
    }
}
