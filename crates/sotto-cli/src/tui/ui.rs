//! Drawing the chat app: [`draw`] is a pure function of the [`App`] onto a
//! ratatui frame. Layout: a status line (account, connection), the
//! conversation list, the open conversation, its members with their
//! verification state, the composer, and a hint line. Every text shown
//! came through [`super::text`] when it entered the app.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph};
use sotto_client::Trust;

use super::app::{App, Delivery, Entry, Focus, Hit, Popup, Quote};
use super::commands::HELP;
use super::text;
use crate::worker::Connection;

/// Smallest area the app draws in; smaller gets a one-line notice.
const MIN_WIDTH: u16 = 30;
const MIN_HEIGHT: u16 = 8;
/// The conversation list's width.
const LIST_WIDTH: u16 = 22;
/// The member list's width, shown from 90 columns on.
const MEMBERS_WIDTH: u16 = 24;

struct Styles {
    color: bool,
}

impl Styles {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn alert(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }
}

/// Draws the whole app.
pub fn draw(app: &App, f: &mut Frame<'_>) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(Paragraph::new("terminal too small"), area);
        return;
    }
    let st = Styles { color: app.color };
    let composer_height = (app.composer.split('\n').count() as u16).clamp(1, 5) + 2;
    let [top, middle, composer, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(composer_height),
        Constraint::Length(1),
    ])
    .areas(area);
    status_line(app, &st, f, top);
    let show_members = middle.width >= 90;
    let [list, conv, members] = Layout::horizontal([
        Constraint::Length(LIST_WIDTH),
        Constraint::Min(10),
        Constraint::Length(if show_members { MEMBERS_WIDTH } else { 0 }),
    ])
    .areas(middle);
    conversation_list(app, &st, f, list);
    conversation(app, &st, f, conv, show_members);
    if show_members {
        member_list(app, &st, f, members);
    }
    composer_box(app, f, composer);
    hint_line(app, &st, f, bottom);
    if app.help {
        help(f, area);
    } else if let Some(p) = &app.popup {
        popup(p, &st, f, area);
    }
}

fn status_line(app: &App, st: &Styles, f: &mut Frame<'_>, area: Rect) {
    let (mark, text, style) = match &app.connection {
        Connection::Online => ("●", "online".to_owned(), st.fg(Color::Green)),
        Connection::Connecting => ("…", "connecting".to_owned(), st.fg(Color::Yellow)),
        Connection::Offline { reason, retry_in_s } => (
            "○",
            if *retry_in_s > 0 {
                format!(
                    "offline, retrying in {retry_in_s}s: {}",
                    text::clean(reason)
                )
            } else {
                format!("offline: {}", text::clean(reason))
            },
            st.alert(),
        ),
    };
    let line = Line::from(vec![
        Span::styled(" sotto ", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{} ", app.me)),
        Span::styled(format!("{mark} {text}"), style),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn focused_block(title: &str, focused: bool) -> Block<'_> {
    let b = Block::default().borders(Borders::ALL).title(title);
    if focused {
        b.border_style(Style::default().add_modifier(Modifier::BOLD))
            .title_style(Style::default().add_modifier(Modifier::BOLD))
    } else {
        b
    }
}

fn conversation_list(app: &App, st: &Styles, f: &mut Frame<'_>, area: Rect) {
    let items: Vec<ListItem<'_>> = app
        .conversations
        .iter()
        .map(|c| {
            let unread = app.unread.get(&c.group).copied().unwrap_or(0);
            let mark = if c.is_group { "#" } else { " " };
            let name = text::clean(&c.name);
            let open = if app.open == Some(c.group) {
                "›"
            } else {
                " "
            };
            let mut spans = vec![Span::raw(format!("{open}{mark}{name}"))];
            if unread > 0 {
                spans.push(Span::styled(
                    format!(" ({unread})"),
                    st.fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ));
            }
            if c.state != sotto_client::ConversationState::Active {
                spans.push(Span::styled(format!(" [{}]", c.state), st.dim()));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let block = focused_block("Conversations", app.focus == Focus::List);
    if items.is_empty() {
        let p = Paragraph::new("none yet: /msg HANDLE TEXT").block(block);
        f.render_widget(p, area);
        return;
    }
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(list, area, &mut state);
}

fn delivery_mark(d: Delivery) -> &'static str {
    match d {
        Delivery::Sending => " …",
        Delivery::Sent => " ✓",
        Delivery::Delivered => " ✓✓",
        Delivery::Read => " ✓✓ read",
        Delivery::Queued => " ⧗ queued",
        Delivery::Failed => " ✗ not sent",
        Delivery::Received => "",
    }
}

/// `s` cut to `width` columns, with `…` when cut.
fn truncate(s: &str, width: usize) -> String {
    let width = width.max(1);
    if unicode_width::UnicodeWidthStr::width(s) <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// The one line that says what a reply replies to.
fn quote_text(q: Option<Quote<'_>>) -> String {
    match q {
        Some(q) => format!("{}: {}", q.sender, q.first_line),
        None => "a message you don't have".to_owned(),
    }
}

fn conversation(app: &App, st: &Styles, f: &mut Frame<'_>, area: Rect, members_shown: bool) {
    let Some(c) = app.open_conversation() else {
        let p = Paragraph::new(vec![
            Line::raw("Select a conversation with ↑/↓ (j/k) and Enter."),
            Line::raw("? shows the keys and commands."),
        ])
        .block(Block::default().borders(Borders::ALL));
        f.render_widget(p, area);
        return;
    };
    let mut title = format!(
        "{}{}",
        if c.is_group { "#" } else { "" },
        text::clean(&c.name)
    );
    if let Some(t) = c.disappear_after_s {
        title.push_str(&format!(" ⏱ {}", sotto_client::client::human(t)));
    }
    if !members_shown {
        // No room for the member list: members and their trust in the title.
        let others: Vec<String> = c
            .members
            .iter()
            .filter(|m| !m.is_me)
            .map(|m| format!("{}{}", trust_mark(m.trust), text::clean(&m.handle)))
            .collect();
        if !others.is_empty() {
            title.push_str(&format!(" · {}", others.join(" ")));
        }
    }
    let block = focused_block(&title, app.focus == Focus::Messages);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut body = inner;
    let changed = app.changed_keys();
    if !changed.is_empty() && body.height > 2 {
        let [banner, rest] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(body);
        let who = changed.join(", ");
        let first = changed.first().copied().unwrap_or_default();
        let warn = Paragraph::new(Line::styled(
            format!("⚠ identity key changed: {who}. Compare: /verify {first}"),
            st.alert().add_modifier(Modifier::REVERSED),
        ));
        f.render_widget(warn, banner);
        body = rest;
    }
    let width = usize::from(body.width.max(1));
    let mut lines: Vec<Line<'_>> = Vec::new();
    // The lines of the selected message, to keep it in view.
    let mut marked_lines = None;
    for e in app
        .entries
        .get(&c.group)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match e {
            Entry::Notice { text: t, time_ms } => {
                for piece in text::wrap(&format!("{} — {t}", text::clock(*time_ms)), width) {
                    lines.push(Line::styled(piece, st.fg(Color::Yellow)));
                }
            }
            Entry::Message {
                id,
                sender,
                lines: body_lines,
                time_ms,
                outgoing,
                delivery,
                reply_to,
                edited,
                reactions,
                ..
            } => {
                let first = lines.len();
                let marked = id.is_some() && *id == app.marked;
                let head = format!("{} {sender}: ", text::clock(*time_ms));
                let indent = " ".repeat(6);
                if let Some(r) = reply_to {
                    // One line quoting what it replies to.
                    let quote = format!("{indent}╭ {}", quote_text(app.quote(*r)));
                    lines.push(Line::styled(truncate(&quote, width), st.dim()));
                }
                let who_style = if *outgoing {
                    st.fg(Color::Blue).add_modifier(Modifier::BOLD)
                } else {
                    st.fg(Color::Magenta).add_modifier(Modifier::BOLD)
                };
                let n = body_lines.len();
                for (i, l) in body_lines.iter().enumerate() {
                    let mark = match (i + 1 == n, *edited) {
                        (true, true) => format!(" (edited){}", delivery_mark(*delivery)),
                        (true, false) => delivery_mark(*delivery).to_owned(),
                        (false, _) => String::new(),
                    };
                    let prefix = if i == 0 { head.clone() } else { indent.clone() };
                    let full = format!("{prefix}{l}{mark}");
                    for (j, piece) in text::wrap(&full, width).into_iter().enumerate() {
                        if i == 0 && j == 0 && piece.len() >= head.len() {
                            let (h, rest) = piece.split_at(head.len());
                            lines.push(Line::from(vec![
                                Span::styled(h.to_owned(), who_style),
                                Span::raw(rest.to_owned()),
                            ]));
                        } else {
                            lines.push(Line::raw(piece));
                        }
                    }
                }
                if !reactions.is_empty() {
                    let r = format!("{indent}{reactions}");
                    lines.push(Line::styled(truncate(&r, width), st.dim()));
                }
                if marked {
                    for l in &mut lines[first..] {
                        l.style = l.style.add_modifier(Modifier::REVERSED);
                    }
                    marked_lines = Some(first);
                }
            }
        }
    }
    let height = usize::from(body.height);
    let max_scroll = lines.len().saturating_sub(height);
    let mut scroll = app.scroll;
    if let Some(first) = marked_lines {
        // The selected message's first line stays in view.
        let bottom = lines.len().saturating_sub(scroll);
        if first < bottom.saturating_sub(height) || first >= bottom {
            scroll = lines.len().saturating_sub(first + height);
        }
    }
    let scroll = scroll.min(max_scroll);
    let start = lines.len().saturating_sub(height + scroll);
    let end = lines.len().saturating_sub(scroll);
    let shown: Vec<Line<'_>> = lines.drain(start..end).collect();
    f.render_widget(Paragraph::new(shown), body);
}

fn member_list(app: &App, st: &Styles, f: &mut Frame<'_>, area: Rect) {
    let block = Block::default().borders(Borders::ALL).title("Members");
    let Some(c) = app.open_conversation() else {
        f.render_widget(block, area);
        return;
    };
    let lines: Vec<Line<'_>> = c
        .members
        .iter()
        .map(|m| {
            let name = text::clean(&m.handle);
            if m.is_me {
                return Line::raw(format!("  {name} (you)"));
            }
            let mark = trust_mark(m.trust);
            let style = match m.trust {
                Trust::Verified => st.fg(Color::Green),
                Trust::Unverified => Style::default(),
                Trust::KeyChanged | Trust::KeyChangedAfterVerify => st.alert(),
            };
            Line::styled(format!("{mark} {name} {}", m.trust.as_str()), style)
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// `✓` verified, `?` unverified, `!` key changed.
fn trust_mark(t: Trust) -> &'static str {
    match t {
        Trust::Verified => "✓",
        Trust::Unverified => "?",
        Trust::KeyChanged | Trust::KeyChangedAfterVerify => "!",
    }
}

fn composer_box(app: &App, f: &mut Frame<'_>, area: Rect) {
    let focused = app.focus == Focus::Composer;
    let width = usize::from(area.width.saturating_sub(2));
    let title = match (app.replying, app.editing, app.reacting) {
        (Some(r), _, _) => truncate(
            &format!("Replying to {} (Esc cancels)", quote_text(app.quote(r))),
            width,
        ),
        (_, Some(_), _) => truncate("Editing your message (Enter saves, Esc cancels)", width),
        (_, _, Some(r)) => truncate(
            &format!(
                "React to {} with an emoji (Enter reacts, Esc cancels)",
                quote_text(app.quote(r))
            ),
            width,
        ),
        _ if focused => "Message (Enter sends, Alt+Enter new line, Esc list)".to_owned(),
        _ => "Message (i or Tab to write)".to_owned(),
    };
    let block = focused_block(&title, focused);
    let inner = block.inner(area);
    let all: Vec<&str> = app.composer.split('\n').collect();
    // The cursor's line and column.
    let before = &app.composer[..app.cursor.min(app.composer.len())];
    let row = before.matches('\n').count();
    let col_text = before.rsplit('\n').next().unwrap_or_default();
    let col = unicode_width::UnicodeWidthStr::width(col_text);
    let h = usize::from(inner.height.max(1));
    let first = (row + 1).saturating_sub(h);
    let w = usize::from(inner.width.max(1));
    let hscroll = (col + 1).saturating_sub(w);
    let lines: Vec<Line<'_>> = all
        .iter()
        .skip(first)
        .take(h)
        .map(|l| Line::raw(l.chars().skip(hscroll).collect::<String>()))
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
    if focused && app.popup.is_none() && !app.help && inner.width > 0 && inner.height > 0 {
        let x = inner.x
            + u16::try_from(col - hscroll)
                .unwrap_or(0)
                .min(inner.width - 1);
        let y = inner.y
            + u16::try_from(row - first)
                .unwrap_or(0)
                .min(inner.height - 1);
        f.set_cursor_position((x, y));
    }
}

fn hint_line(app: &App, st: &Styles, f: &mut Frame<'_>, area: Rect) {
    let line = match &app.status {
        Some(s) => Line::styled(text::clean(s), st.fg(Color::Yellow)),
        None if app.focus == Focus::Messages => Line::styled(
            "↑↓ select · r reply · +/- react · w who reacted · e edit · d delete · Esc back",
            st.dim(),
        ),
        // Keys typed here are text: the hint names none that would be.
        None if app.focus == Focus::Composer => Line::styled(
            "Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list",
            st.dim(),
        ),
        None => Line::styled(
            "↑↓/jk select · Enter open · / command · ? help · q quit",
            st.dim(),
        ),
    };
    f.render_widget(Paragraph::new(line), area);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn help(f: &mut Frame<'_>, area: Rect) {
    let mut lines = vec![
        Line::styled("Keys", Style::default().add_modifier(Modifier::BOLD)),
        Line::raw("↑↓ j k   select a conversation    Enter l   open it"),
        Line::raw("i Tab     write                    Esc       back to the list"),
        Line::raw("Enter     send                     Alt+Enter new line"),
        Line::raw("PgUp PgDn scroll                   q Ctrl+C  quit"),
        Line::raw("↑ (empty) select a message         r Enter   reply to it (Esc cancels)"),
        Line::raw("+ - w     react, unreact, who      e d       edit, delete (your own)"),
        Line::styled("Commands", Style::default().add_modifier(Modifier::BOLD)),
    ];
    lines.extend(HELP.iter().map(|(u, d)| Line::raw(format!("{u:<36} {d}"))));
    let h = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let r = centered(area, 78, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title("Help (Esc closes)"),
        ),
        r,
    );
}

fn popup(p: &Popup, st: &Styles, f: &mut Frame<'_>, area: Rect) {
    match p {
        Popup::Verification {
            handle,
            number,
            trust,
        } => verification(handle, number, *trust, st, f, area),
        Popup::Search {
            query,
            hits,
            selected,
        } => search_results(query, hits, *selected, st, f, area),
        Popup::Backup { summary, key } => backup(summary, key, f, area),
    }
}

/// A backup just written, and its recovery key: shown this once.
fn backup(summary: &str, key: &str, f: &mut Frame<'_>, area: Rect) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let lines = vec![
        Line::raw(format!("Backup written to {summary}.")),
        Line::raw(""),
        Line::raw("Recovery key:"),
        Line::styled(key.to_owned(), bold),
        Line::raw(""),
        Line::raw("Write it down now: it is shown this once and stored nowhere."),
        Line::raw("Without it the backup cannot be opened; with it, anyone can."),
        Line::raw("Esc closes"),
    ];
    let r = centered(area, 84, 10);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("Backup")),
        r,
    );
}

/// The results of `/search`, newest first, one line each: when, where,
/// who, what.
fn search_results(
    query: &str,
    hits: &[Hit],
    selected: usize,
    st: &Styles,
    f: &mut Frame<'_>,
    area: Rect,
) {
    let width = area.width.saturating_sub(4).min(100);
    let rows = u16::try_from(hits.len().max(1)).unwrap_or(u16::MAX);
    let r = centered(
        area,
        width,
        rows.saturating_add(2).min(area.height.saturating_sub(2)),
    );
    let title = match hits.len() {
        0 => format!("Search \"{query}\": nothing found · Esc closes"),
        n => format!("Search \"{query}\": {n} found · Enter opens · Esc closes"),
    };
    let inner = usize::from(r.width.saturating_sub(2));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(truncate(&title, inner));
    f.render_widget(Clear, r);
    if hits.is_empty() {
        f.render_widget(Paragraph::new("").block(block), r);
        return;
    }
    let items: Vec<ListItem<'_>> = hits
        .iter()
        .map(|h| {
            let when = format!("{} {} ", text::date(h.time_ms), text::clock(h.time_ms));
            let rest = format!("[{}] {}: {}", h.conversation, h.sender, h.text);
            let rest = truncate(&rest, inner.saturating_sub(when.len()));
            ListItem::new(Line::from(vec![
                Span::styled(when, st.dim()),
                Span::raw(rest),
            ]))
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(Some(selected));
    f.render_stateful_widget(list, r, &mut state);
}

fn verification(
    handle: &str,
    number: &str,
    trust: Trust,
    st: &Styles,
    f: &mut Frame<'_>,
    area: Rect,
) {
    let groups = crate::ops::safety_number_groups(number);
    let half = groups.len() / 2;
    let (a, b) = groups.split_at(half);
    let mut lines = vec![
        Line::raw(format!("Safety number with {handle}:")),
        Line::raw(""),
        Line::styled(
            a.trim().to_owned(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Line::styled(
            b.trim().to_owned(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Line::raw(""),
    ];
    let state = match trust {
        Trust::Verified => Line::styled(format!("{handle} is verified."), st.fg(Color::Green)),
        Trust::KeyChanged | Trust::KeyChangedAfterVerify => Line::styled(
            format!("WARNING: {handle}'s identity key changed."),
            st.alert(),
        ),
        Trust::Unverified => Line::raw(format!("{handle} is not verified.")),
    };
    lines.push(state);
    lines.push(Line::raw(
        "Compare it with theirs in person or on a call you trust;",
    ));
    lines.push(Line::raw(format!(
        "if it matches: /verify {handle} confirm"
    )));
    lines.push(Line::raw("Esc closes"));
    let r = centered(area, 66, 12);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("Verify")),
        r,
    );
}
