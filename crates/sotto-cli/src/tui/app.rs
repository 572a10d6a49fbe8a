//! The chat app's state and how it changes: [`App::handle`] takes a key,
//! a paste or a worker event and returns the commands for the worker. No
//! IO, no clock (the caller passes the time), no terminal: the tests drive
//! it directly and draw it on ratatui's `TestBackend`.

use std::collections::{HashMap, HashSet};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use sotto_client::{ConversationInfo, ReceivedMessage, Sent, Trust, Updates};
use sotto_proto::{GroupId, MessageId};

use super::commands::{self, Action};
use super::text;
use crate::ops::{Op, Outcome};
use crate::worker::{Command, Connection, Event, Failure};

/// What the app reacts to.
#[derive(Debug)]
pub enum Input {
    /// A key press.
    Key(KeyEvent),
    /// Pasted text (bracketed paste).
    Paste(String),
    /// Something from the worker.
    Worker(Event),
}

/// Where the keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list.
    List,
    /// The composer.
    Composer,
    /// The open conversation's messages: one is selected ([`App::marked`]),
    /// to reply to.
    Messages,
}

/// How far one of this device's messages got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the worker.
    Sending,
    /// The server accepted it.
    Sent,
    /// A device of another member decrypted it.
    Delivered,
    /// Another member was shown it.
    Read,
    /// Encrypted and kept in the outbox until the server is reachable.
    Queued,
    /// Not sent (the status line says why).
    Failed,
    /// Someone else's message.
    Received,
}

impl Delivery {
    /// What a message the server accepted shows, by its receipts.
    fn of_receipts(delivered_to: u32, read_by: u32) -> Self {
        match (delivered_to, read_by) {
            (_, 1..) => Self::Read,
            (1.., 0) => Self::Delivered,
            (0, 0) => Self::Sent,
        }
    }
}

/// A line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A message.
    Message {
        /// Its id, once known.
        id: Option<MessageId>,
        /// For a message typed here: the id of the command sending it.
        local: Option<u64>,
        /// Who sent it (cleaned).
        sender: String,
        /// Its text, line by line (cleaned).
        lines: Vec<String>,
        /// When it was stored here (ms since the epoch).
        time_ms: u64,
        /// Sent by this account.
        outgoing: bool,
        /// Its delivery state.
        delivery: Delivery,
        /// The message it replies to, if it is a reply.
        reply_to: Option<MessageId>,
        /// Its sender edited it.
        edited: bool,
        /// Its reactions, one line ("👍 2  ❤️ 1", cleaned), or empty.
        reactions: String,
    },
    /// Something that happened (cleaned).
    Notice {
        /// The text.
        text: String,
        /// When it was shown.
        time_ms: u64,
    },
}

impl Entry {
    /// Where it goes in a conversation: by time, and a notice before the
    /// messages of the same moment (it came with them: "carol added you"
    /// before what carol wrote).
    fn order(&self) -> (u64, u8) {
        match self {
            Self::Notice { time_ms, .. } => (*time_ms, 0),
            Self::Message { time_ms, .. } => (*time_ms, 1),
        }
    }

    fn from_message(m: &ReceivedMessage, queued: &HashSet<MessageId>) -> Self {
        let lines = if m.deleted {
            vec!["(message deleted)".to_owned()]
        } else if m.unsupported {
            vec!["(unsupported message: a newer version of Sotto can show it)".to_owned()]
        } else {
            text::clean_lines(&m.text)
        };
        Self::Message {
            id: Some(m.id),
            local: None,
            sender: text::clean(&m.sender),
            lines,
            time_ms: m.received_at_ms,
            outgoing: m.outgoing,
            delivery: if !m.outgoing {
                Delivery::Received
            } else if queued.contains(&m.id) {
                Delivery::Queued
            } else {
                Delivery::of_receipts(m.delivered_to, m.read_by)
            },
            reply_to: m.reply_to,
            edited: m.edited_at_ms.is_some() && !m.deleted,
            reactions: m
                .reactions
                .iter()
                .map(|(emoji, n)| format!("{} {n}", text::clean(emoji)))
                .collect::<Vec<_>>()
                .join("  "),
        }
    }
}

/// The message a reply quotes, as shown above the reply and in the
/// composer: its sender and its first line (both cleaned), or `None` for a
/// message this device doesn't have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote<'a> {
    /// Who sent it.
    pub sender: &'a str,
    /// Its first line.
    pub first_line: &'a str,
}

/// A message a search found, as the results list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Its conversation.
    pub group: GroupId,
    /// Its id.
    pub id: MessageId,
    /// The conversation's name (cleaned).
    pub conversation: String,
    /// Who sent it (cleaned).
    pub sender: String,
    /// Its text on one line (cleaned).
    pub text: String,
    /// When it was stored here (ms since the epoch).
    pub time_ms: u64,
}

impl Hit {
    fn from_message(m: &ReceivedMessage) -> Self {
        Self {
            group: m.group,
            id: m.id,
            conversation: text::clean(&m.conversation),
            sender: text::clean(&m.sender),
            text: text::clean_lines(&m.text).join(" "),
            time_ms: m.received_at_ms,
        }
    }
}

/// A popup over the screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popup {
    /// A safety number to compare.
    Verification {
        /// The contact (cleaned).
        handle: String,
        /// 60 digits.
        number: String,
        /// The contact's trust.
        trust: Trust,
    },
    /// A backup was written: where, what it holds, and its recovery key,
    /// shown this once (until Esc).
    Backup {
        /// Where it went, and what it holds (cleaned).
        summary: String,
        /// The recovery key.
        key: zeroize::Zeroizing<String>,
    },
    /// What `/search` found, newest first; Enter opens the selected
    /// message in its conversation.
    Search {
        /// What was searched for (cleaned).
        query: String,
        /// The messages found.
        hits: Vec<Hit>,
        /// The selected one.
        selected: usize,
    },
}

/// What a command sent to the worker was for.
#[derive(Debug, Clone)]
enum Pending {
    /// A message typed here, shown in this conversation.
    Message(GroupId),
    /// A conversation's history.
    History(GroupId),
    /// A reaction, edit or deletion of a message of this conversation:
    /// its history is loaded again once it went.
    Change(GroupId, Op),
    /// A search for this text (cleaned): its results go in a popup.
    Search(String),
    /// Anything else: its outcome goes to the status line.
    Other(Op),
    /// Marking a conversation read: only a failure is shown.
    Read,
}

/// The whole state of the chat app.
#[derive(Debug)]
pub struct App {
    /// This account's handle.
    pub me: String,
    /// Conversations, newest activity first.
    pub conversations: Vec<ConversationInfo>,
    /// The highlighted conversation in the list.
    pub selected: usize,
    /// The open conversation.
    pub open: Option<GroupId>,
    /// Lines of the conversations (complete once their history is loaded).
    pub entries: HashMap<GroupId, Vec<Entry>>,
    /// Conversations whose history is loaded (or being loaded).
    loaded: HashSet<GroupId>,
    /// Messages not yet seen, per conversation.
    pub unread: HashMap<GroupId, usize>,
    /// The composer's text.
    pub composer: String,
    /// The composer's cursor, a byte index into `composer`.
    pub cursor: usize,
    /// Where the keys go.
    pub focus: Focus,
    /// The help is shown.
    pub help: bool,
    /// A popup, if any.
    pub popup: Option<Popup>,
    /// The last result or error, one line.
    pub status: Option<String>,
    /// The connection to the server.
    pub connection: Connection,
    /// Lines scrolled up from the newest message.
    pub scroll: usize,
    /// The selected message of the open conversation (focus on messages).
    pub marked: Option<MessageId>,
    /// The message the composer's text will reply to.
    pub replying: Option<MessageId>,
    /// The message the composer's text will replace (an edit).
    pub editing: Option<MessageId>,
    /// The message the composer's emoji will react to.
    pub reacting: Option<MessageId>,
    /// The message to delete for everyone once the user confirms (`y`).
    pub deleting: Option<MessageId>,
    /// Colors allowed (not NO_COLOR).
    pub color: bool,
    /// The app should end.
    pub quit: bool,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl App {
    /// A fresh app for the account `me`.
    pub fn new(me: &str, color: bool) -> Self {
        Self {
            me: text::clean(me),
            conversations: Vec::new(),
            selected: 0,
            open: None,
            entries: HashMap::new(),
            loaded: HashSet::new(),
            unread: HashMap::new(),
            composer: String::new(),
            cursor: 0,
            focus: Focus::List,
            help: false,
            popup: None,
            status: None,
            connection: Connection::Connecting,
            scroll: 0,
            marked: None,
            replying: None,
            editing: None,
            reacting: None,
            deleting: None,
            color,
            quit: false,
            pending: HashMap::new(),
            next_id: 1,
        }
    }

    /// The open conversation.
    pub fn open_conversation(&self) -> Option<&ConversationInfo> {
        let g = self.open?;
        self.conversations.iter().find(|c| c.group == g)
    }

    /// The sender and first line of the message `id` of the open
    /// conversation; `None` if this device doesn't have it.
    pub fn quote(&self, id: MessageId) -> Option<Quote<'_>> {
        let g = self.open?;
        self.entries.get(&g)?.iter().find_map(|e| match e {
            Entry::Message {
                id: Some(i),
                sender,
                lines,
                ..
            } if *i == id => Some(Quote {
                sender,
                first_line: lines.first().map(String::as_str).unwrap_or_default(),
            }),
            _ => None,
        })
    }

    /// The ids of the open conversation's messages that can be replied to
    /// (those with an id), oldest first.
    fn message_ids(&self) -> Vec<MessageId> {
        self.open
            .and_then(|g| self.entries.get(&g))
            .map(|v| {
                v.iter()
                    .filter_map(|e| match e {
                        Entry::Message { id: Some(id), .. } => Some(*id),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Members of the open conversation whose key changed.
    pub fn changed_keys(&self) -> Vec<&str> {
        self.open_conversation()
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| matches!(m.trust, Trust::KeyChanged | Trust::KeyChangedAfterVerify))
                    .map(|m| m.handle.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reacts to one input at time `now_ms`; returns the commands for the worker.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Key(k) if k.kind != KeyEventKind::Release => self.key(k, now_ms, &mut out),
            Input::Key(_) => {}
            Input::Paste(s) => {
                self.focus = Focus::Composer;
                self.insert(&text::clean_input(&s));
            }
            Input::Worker(e) => self.event(e, now_ms, &mut out),
        }
        out
    }

    fn command(&mut self, op: Op, why: Pending, out: &mut Vec<Command>) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, why);
        out.push(Command { id, op });
    }

    fn key(&mut self, k: KeyEvent, now_ms: u64, out: &mut Vec<Command>) {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c' | 'q')) {
            self.quit = true;
            return;
        }
        if !self.help && matches!(self.popup, Some(Popup::Search { .. })) {
            self.search_key(k, out);
            return;
        }
        if self.help || self.popup.is_some() {
            if matches!(
                k.code,
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q' | '?')
            ) {
                self.help = false;
                self.popup = None;
            }
            return;
        }
        match k.code {
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(5),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(5),
            _ => match self.focus {
                Focus::List => self.list_key(k, out),
                Focus::Composer => self.composer_key(k, now_ms, out),
                Focus::Messages => self.messages_key(k, out),
            },
        }
    }

    fn list_key(&mut self, k: KeyEvent, out: &mut Vec<Command>) {
        let n = self.conversations.len();
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected = n.saturating_sub(1),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                if let Some(c) = self.conversations.get(self.selected) {
                    let g = c.group;
                    self.open_group(g, out);
                    self.focus = Focus::Composer;
                }
            }
            KeyCode::Tab | KeyCode::Char('i') => self.focus = Focus::Composer,
            KeyCode::Char('/') => {
                self.focus = Focus::Composer;
                self.insert("/");
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('q') => self.quit = true,
            _ => {}
        }
    }

    /// Keys while search results are shown: move, open one, close.
    fn search_key(&mut self, k: KeyEvent, out: &mut Vec<Command>) {
        let Some(Popup::Search { hits, selected, .. }) = &mut self.popup else {
            return;
        };
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => *selected = selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                *selected = (*selected + 1).min(hits.len().saturating_sub(1));
            }
            KeyCode::Enter => {
                let hit = hits.get(*selected).map(|h| (h.group, h.id));
                self.popup = None;
                if let Some((g, id)) = hit {
                    self.show_message(g, id, out);
                }
            }
            KeyCode::Esc | KeyCode::Char('q') => self.popup = None,
            _ => {}
        }
    }

    /// Opens the conversation `g` with its message `id` selected (once
    /// its history is loaded, if it is not yet).
    fn show_message(&mut self, g: GroupId, id: MessageId, out: &mut Vec<Command>) {
        if let Some(i) = self.conversations.iter().position(|c| c.group == g) {
            self.selected = i;
        }
        self.open_group(g, out);
        self.marked = Some(id);
        self.focus = Focus::Messages;
    }

    /// The selected message's entry, if it is one of this account's.
    fn marked_own(&self) -> Option<&Entry> {
        let (g, id) = (self.open?, self.marked?);
        self.entries
            .get(&g)?
            .iter()
            .find(|e| matches!(e, Entry::Message { id: Some(i), outgoing: true, .. } if *i == id))
    }

    /// Sends a change (reaction, edit, deletion) of a message of the open
    /// conversation.
    fn change(&mut self, op: impl FnOnce(String) -> Op, out: &mut Vec<Command>) {
        if let (Some(g), Some(to)) = (self.open, self.open_conversation().map(|c| c.target())) {
            let op = op(to);
            self.command(op.clone(), Pending::Change(g, op), out);
        }
    }

    /// Keys while a message is selected: move, reply, react, edit, delete,
    /// back.
    fn messages_key(&mut self, k: KeyEvent, out: &mut Vec<Command>) {
        let ids = self.message_ids();
        let at = self.marked.and_then(|m| ids.iter().position(|i| *i == m));
        if let Some(id) = self.deleting.take() {
            if k.code == KeyCode::Char('y') {
                let message = id.to_hex();
                self.change(|to| Op::Delete { to, message }, out);
                self.status = Some("deleting for everyone…".into());
            } else {
                self.status = Some("kept".into());
            }
            return;
        }
        match (k.code, at) {
            (KeyCode::Char('+'), Some(_)) => {
                self.reacting = self.marked.take();
                self.composer.clear();
                self.cursor = 0;
                self.focus = Focus::Composer;
            }
            (KeyCode::Char('-'), Some(_)) => {
                let message = self.marked.map(|m| m.to_hex()).unwrap_or_default();
                self.change(
                    |to| Op::React {
                        to,
                        message,
                        emoji: None,
                    },
                    out,
                );
            }
            (KeyCode::Char('w'), Some(_)) => {
                if let Some(to) = self.open_conversation().map(|c| c.target()) {
                    let message = self.marked.map(|m| m.to_hex()).unwrap_or_default();
                    let op = Op::Reactions { to, message };
                    self.command(op.clone(), Pending::Other(op), out);
                }
            }
            (KeyCode::Char('e'), Some(_)) => match self.marked_own() {
                Some(Entry::Message { lines, .. }) => {
                    self.composer = lines.join("\n");
                    self.cursor = self.composer.len();
                    self.editing = self.marked.take();
                    self.focus = Focus::Composer;
                }
                _ => self.status = Some("only your own messages can be edited".into()),
            },
            (KeyCode::Char('d'), Some(_)) => {
                if self.marked_own().is_some() {
                    self.deleting = self.marked;
                    self.status = Some(
                        "delete this message for everyone? y deletes, any other key keeps it"
                            .into(),
                    );
                } else {
                    self.status = Some("only your own messages can be deleted".into());
                }
            }
            (KeyCode::Up | KeyCode::Char('k'), Some(i)) => {
                self.marked = ids.get(i.saturating_sub(1)).copied()
            }
            (KeyCode::Down | KeyCode::Char('j'), Some(i)) if i + 1 < ids.len() => {
                self.marked = ids.get(i + 1).copied();
            }
            (KeyCode::Char('r') | KeyCode::Enter, Some(_)) => {
                self.replying = self.marked.take();
                self.focus = Focus::Composer;
            }
            (KeyCode::Char('?'), _) => self.help = true,
            // Past the newest message, Esc, Tab, i: back to writing.
            (
                KeyCode::Down
                | KeyCode::Char('j')
                | KeyCode::Esc
                | KeyCode::Tab
                | KeyCode::Char('i'),
                _,
            )
            | (_, None) => {
                self.marked = None;
                self.focus = Focus::Composer;
            }
            _ => {}
        }
    }

    fn open_group(&mut self, g: GroupId, out: &mut Vec<Command>) {
        if self.open != Some(g) {
            // What was begun on a message of the last one ends here.
            self.marked = None;
            self.replying = None;
            self.editing = None;
            self.reacting = None;
            self.deleting = None;
        }
        self.open = Some(g);
        self.scroll = 0;
        self.unread.remove(&g);
        let target = self.open_conversation().map(ConversationInfo::target);
        if let (false, Some(conversation)) = (self.loaded.contains(&g), target.clone()) {
            self.loaded.insert(g);
            self.command(Op::History { conversation }, Pending::History(g), out);
        }
        // What it shows is read now (its senders learn it, where read
        // receipts are on).
        if let Some(conversation) = target {
            self.command(Op::MarkRead { conversation }, Pending::Read, out);
        }
    }

    fn composer_key(&mut self, k: KeyEvent, now_ms: u64, out: &mut Vec<Command>) {
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            // Esc first cancels a reply, an edit or a reaction, then goes
            // back to the list.
            KeyCode::Esc if self.replying.is_some() => self.replying = None,
            KeyCode::Esc if self.editing.is_some() || self.reacting.is_some() => {
                self.editing = None;
                self.reacting = None;
                self.composer.clear();
                self.cursor = 0;
            }
            KeyCode::Esc | KeyCode::Tab => self.focus = Focus::List,
            KeyCode::Enter if alt || k.modifiers.contains(KeyModifiers::SHIFT) => self.insert("\n"),
            KeyCode::Enter => self.submit(now_ms, out),
            KeyCode::Char('u') if ctrl => {
                self.composer.clear();
                self.cursor = 0;
            }
            KeyCode::Char('?') if self.composer.is_empty() => self.help = true,
            KeyCode::Char(c) if !ctrl => {
                let mut b = [0u8; 4];
                self.insert(c.encode_utf8(&mut b));
            }
            KeyCode::Backspace => {
                if let Some((i, _)) = self.composer[..self.cursor].char_indices().next_back() {
                    self.composer.remove(i);
                    self.cursor = i;
                }
            }
            KeyCode::Delete if self.cursor < self.composer.len() => {
                self.composer.remove(self.cursor);
            }
            KeyCode::Left => {
                if let Some((i, _)) = self.composer[..self.cursor].char_indices().next_back() {
                    self.cursor = i;
                }
            }
            KeyCode::Right => {
                if let Some(c) = self.composer[self.cursor..].chars().next() {
                    self.cursor += c.len_utf8();
                }
            }
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.composer.len(),
            // ↑ in an empty composer selects the newest message, to reply to.
            KeyCode::Up if self.composer.is_empty() => {
                if let Some(newest) = self.message_ids().last() {
                    self.marked = Some(*newest);
                    self.focus = Focus::Messages;
                    self.scroll = 0;
                }
            }
            _ => {}
        }
    }

    fn insert(&mut self, s: &str) {
        self.composer.insert_str(self.cursor, s);
        self.cursor += s.len();
    }

    fn submit(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let line = std::mem::take(&mut self.composer);
        self.cursor = 0;
        if line.trim().is_empty() {
            return;
        }
        let open = self.open_conversation().map(ConversationInfo::target);
        if let Some(id) = self.reacting.take() {
            let emoji = line.trim().to_owned();
            let message = id.to_hex();
            self.change(
                |to| Op::React {
                    to,
                    message,
                    emoji: Some(emoji),
                },
                out,
            );
            return;
        }
        if let Some(id) = self.editing.take() {
            let message = id.to_hex();
            self.change(
                |to| Op::Edit {
                    to,
                    message,
                    text: line,
                },
                out,
            );
            return;
        }
        if line.starts_with('/') && !line.starts_with("//") {
            match commands::parse(&line, open.as_deref()) {
                Ok(Action::Help) => self.help = true,
                Ok(Action::Quit) => self.quit = true,
                Ok(Action::Op(op)) => {
                    self.status = Some(format!("{}…", line.trim()));
                    let why = match &op {
                        Op::Search { text: t, .. } => Pending::Search(text::clean(t)),
                        _ => Pending::Other(op.clone()),
                    };
                    self.command(op, why, out);
                }
                Err(e) => {
                    self.status = Some(e);
                    self.composer = line;
                    self.cursor = self.composer.len();
                }
            }
            return;
        }
        // `//text` sends `/text`.
        let body = line
            .strip_prefix('/')
            .filter(|_| line.starts_with("//"))
            .unwrap_or(&line);
        let (Some(g), Some(to)) = (self.open, open) else {
            self.status = Some("open a conversation first (or /msg HANDLE TEXT)".into());
            self.composer = line;
            self.cursor = self.composer.len();
            return;
        };
        let local = self.next_id;
        let reply_to = self.replying.take();
        self.entries.entry(g).or_default().push(Entry::Message {
            id: None,
            local: Some(local),
            sender: self.me.clone(),
            lines: text::clean_lines(body),
            time_ms: now_ms,
            outgoing: true,
            delivery: Delivery::Sending,
            reply_to,
            edited: false,
            reactions: String::new(),
        });
        self.scroll = 0;
        self.command(
            Op::Send {
                to,
                text: body.to_owned(),
                reply_to: reply_to.map(|r| r.to_hex()),
            },
            Pending::Message(g),
            out,
        );
    }

    fn event(&mut self, e: Event, now_ms: u64, out: &mut Vec<Command>) {
        match e {
            Event::Connection(c) => self.connection = c,
            Event::Updates(u) => self.updates(u, now_ms, out),
            Event::Conversations(list) => self.set_conversations(list, out),
            Event::Done { id, result } => self.done(id, result, out),
            Event::Stopped(why) => {
                self.status = Some(text::clean(&why));
                self.connection = Connection::Offline {
                    reason: text::clean(&why),
                    retry_in_s: 0,
                };
            }
        }
    }

    fn set_conversations(&mut self, list: Vec<ConversationInfo>, out: &mut Vec<Command>) {
        let selected = self.conversations.get(self.selected).map(|c| c.group);
        self.conversations = list;
        self.selected = selected
            .and_then(|g| self.conversations.iter().position(|c| c.group == g))
            .unwrap_or(0)
            .min(self.conversations.len().saturating_sub(1));
        // A conversation opened before it was listed (a new one) loads now.
        if let Some(g) = self.open.filter(|g| !self.loaded.contains(g)) {
            self.open_group(g, out);
        }
    }

    fn updates(&mut self, u: Updates, now_ms: u64, out: &mut Vec<Command>) {
        // What is new, in the order it came: notices and messages by time,
        // a notice first at the same moment.
        let mut fresh: Vec<(GroupId, Entry)> = Vec::new();
        for n in &u.notices {
            fresh.push((
                n.conversation,
                Entry::Notice {
                    text: text::clean(&crate::notice::text(n)),
                    time_ms: if n.at_ms > 0 { n.at_ms } else { now_ms },
                },
            ));
        }
        for m in &u.messages {
            if self.open != Some(m.group) {
                *self.unread.entry(m.group).or_default() += 1;
            }
            if self.loaded.contains(&m.group) {
                let known = self.entries.get_mut(&m.group).and_then(|v| {
                    v.iter_mut()
                        .find(|e| matches!(e, Entry::Message { id: Some(id), .. } if *id == m.id))
                });
                match known {
                    // Shown again: edited, deleted or reacted to.
                    Some(e) => {
                        let delivery = match e {
                            Entry::Message { delivery, .. } => *delivery,
                            Entry::Notice { .. } => Delivery::Received,
                        };
                        *e = Entry::from_message(m, &HashSet::new());
                        if let Entry::Message { delivery: d, .. } = e {
                            *d = delivery;
                        }
                    }
                    None => fresh.push((m.group, Entry::from_message(m, &HashSet::new()))),
                }
            }
        }
        // Messages arriving in the open conversation are read as they come.
        if let Some(conversation) = self
            .open
            .filter(|g| u.messages.iter().any(|m| m.group == *g && !m.outgoing))
            .and_then(|_| self.open_conversation().map(ConversationInfo::target))
        {
            self.command(Op::MarkRead { conversation }, Pending::Read, out);
        }
        for r in &u.receipts {
            let mine = self.entries.get_mut(&r.conversation).and_then(|v| {
                v.iter_mut()
                    .find(|e| matches!(e, Entry::Message { id: Some(id), .. } if *id == r.id))
            });
            if let Some(Entry::Message { delivery, .. }) = mine {
                *delivery = Delivery::of_receipts(r.delivered_to, r.read_by);
            }
        }
        fresh.sort_by_key(|(_, e)| e.order());
        for (g, e) in fresh {
            self.entries.entry(g).or_default().push(e);
        }
        for w in &u.warnings {
            let w = text::clean(&crate::warning::text(w));
            // A warning naming a member goes into that member's conversations.
            for c in &self.conversations {
                let names_member = c.members.iter().filter(|m| !m.is_me).any(|m| {
                    w.split(|ch: char| {
                        !(ch.is_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
                    })
                    .any(|word| word == m.handle)
                });
                if names_member {
                    self.entries
                        .entry(c.group)
                        .or_default()
                        .push(Entry::Notice {
                            text: w.clone(),
                            time_ms: now_ms,
                        });
                }
            }
            self.status = Some(w);
        }
    }

    fn done(&mut self, id: u64, result: Result<Outcome, Failure>, out: &mut Vec<Command>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match (p, result) {
            (Pending::Message(g), r) => {
                let delivery = match &r {
                    Ok(Outcome::Sent(Sent::Queued(_))) => Delivery::Queued,
                    Ok(_) => Delivery::Sent,
                    Err(_) => Delivery::Failed,
                };
                if let Err(e) = &r {
                    self.status = Some(text::clean(&e.message));
                }
                let mine = self.entries.get_mut(&g).and_then(|v| {
                    v.iter_mut()
                        .find(|e| matches!(e, Entry::Message { local: Some(l), .. } if *l == id))
                });
                if let Some(Entry::Message {
                    id: mid,
                    delivery: d,
                    ..
                }) = mine
                {
                    *d = delivery;
                    if let Ok(Outcome::Sent(sent)) = r {
                        *mid = Some(sent.id());
                    }
                }
            }
            (Pending::History(g), Ok(Outcome::Messages(ms, queued))) => {
                let mut v: Vec<Entry> =
                    ms.iter().map(|m| Entry::from_message(m, &queued)).collect();
                // Notices and messages typed while it loaded stay.
                let known: HashSet<MessageId> = ms.iter().map(|m| m.id).collect();
                if let Some(old) = self.entries.remove(&g) {
                    v.extend(old.into_iter().filter(|e| match e {
                        Entry::Message { id: Some(id), .. } => !known.contains(id),
                        _ => true,
                    }));
                }
                v.sort_by_key(Entry::order);
                self.entries.insert(g, v);
            }
            (Pending::History(g), Err(e)) => {
                self.loaded.remove(&g);
                self.status = Some(text::clean(&e.message));
            }
            (Pending::History(_), Ok(_)) | (Pending::Read, Ok(_)) => {}
            (Pending::Read, Err(e)) => self.status = Some(text::clean(&e.message)),
            (Pending::Change(_, _), Err(e)) => self.status = Some(text::clean(&e.message)),
            (Pending::Change(g, op), Ok(o)) => {
                self.status = Some(text::clean(&crate::ops::summary(&op, &o)));
                // This device's own change shows once its history is read again.
                if let Some(conversation) = self
                    .conversations
                    .iter()
                    .find(|c| c.group == g)
                    .map(ConversationInfo::target)
                {
                    self.command(Op::History { conversation }, Pending::History(g), out);
                }
            }
            (Pending::Search(query), Ok(Outcome::Messages(ms, _))) => {
                self.status = None;
                self.popup = Some(Popup::Search {
                    query,
                    hits: ms.iter().map(Hit::from_message).collect(),
                    selected: 0,
                });
            }
            (Pending::Search(_), Err(e)) => self.status = Some(text::clean(&e.message)),
            (Pending::Search(_), Ok(_)) => {}
            (Pending::Other(_), Err(e)) => self.status = Some(text::clean(&e.message)),
            (Pending::Other(op), Ok(o)) => {
                if let (Op::CreateBackup { path }, Outcome::Backup(n, key)) = (&op, &o) {
                    self.popup = Some(Popup::Backup {
                        summary: text::clean(&format!(
                            "{}: {} conversation(s), {} message(s)",
                            path.display(),
                            n.conversations,
                            n.messages
                        )),
                        key: key.clone(),
                    });
                    self.status = None;
                } else if let Outcome::Verification(v) = &o {
                    self.popup = Some(Popup::Verification {
                        handle: text::clean(&v.contact.handle),
                        number: v.number.clone(),
                        trust: Trust::of(&v.contact),
                    });
                    self.status = None;
                } else {
                    self.status = Some(text::clean(&crate::ops::summary(&op, &o)));
                }
            }
        }
    }
}
