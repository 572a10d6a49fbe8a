//! Text from the network made safe to draw, and small text helpers: no
//! terminal control characters or bidirectional overrides reach the
//! screen (they are shown as the visible escapes of [`crate::display`],
//! as on the command line), times are shown as `HH:MM` and dates as
//! `YYYY-MM-DD` (UTC), long lines are wrapped.

use unicode_width::UnicodeWidthChar;

/// Whether a character typed or pasted may be kept: not one that steers
/// the terminal or hides or reorders text.
fn drawable(c: char) -> bool {
    !sotto_client::names::hides_text(c)
}

/// One line of untrusted text: [`crate::display::visible`].
pub fn clean(s: &str) -> String {
    crate::display::visible(s)
}

/// Untrusted text that may span lines: each line cleaned.
pub fn clean_lines(s: &str) -> Vec<String> {
    crate::display::visible_lines(s)
}

/// Text pasted or typed into the composer: control characters dropped,
/// newlines kept, tabs as spaces.
pub fn clean_input(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .filter_map(|c| match c {
            '\n' => Some('\n'),
            '\t' | '\r' => Some(' '),
            c if drawable(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// `HH:MM` (UTC) of a time in milliseconds since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let minutes = ms / 60_000;
    format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60)
}

/// `YYYY-MM-DD` (UTC) of a time in milliseconds since the Unix epoch.
pub fn date(ms: u64) -> String {
    // Howard Hinnant's days-to-civil, on days since 0000-03-01.
    let z = ms / 86_400_000 + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Splits `s` into pieces of at most `width` columns (at least one
/// character each, so a zero width cannot loop).
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw > width && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            w = 0;
        }
        cur.push(c);
        w += cw;
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_overrides_never_reach_the_screen() {
        let shown = clean(crate::display::HOSTILE);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202E}'));
        assert!(shown.starts_with("hi\\e]0;pwned\\x07"), "{shown:?}");
        assert_eq!(clean_lines("a\nb\x1bc"), ["a", "b\\ec"]);
        assert_eq!(clean_input("x\x1b[A\r\ny\tz\u{202e}"), "x[A\ny z");
    }

    #[test]
    fn wrapping_and_clock() {
        assert_eq!(wrap("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(wrap("", 4), [""]);
        assert_eq!(wrap("ab", 0), ["a", "b"]);
        assert_eq!(clock(0), "00:00");
        assert_eq!(clock((13 * 60 + 7) * 60_000 + 86_400_000), "13:07");
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(86_399_999), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_700_000_000_000), "2023-11-14");
        assert_eq!(date(1_709_251_199_999), "2024-02-29");
        assert_eq!(date(1_709_251_200_000), "2024-03-01");
        assert_eq!(date(4_102_444_800_000), "2100-01-01");
    }
}
