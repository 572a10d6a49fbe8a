//! The chat app's screens without a terminal: the app is driven through
//! `App::handle` with keys and worker events, drawn by `ui::draw` on
//! ratatui's `TestBackend`, and the frames compared with snapshots
//! (`UPDATE_EXPECT=1 cargo test` rewrites them after a deliberate change).

use std::collections::HashSet;

use expect_test::{Expect, expect};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use sotto_cli::ops::{Op, Outcome};
use sotto_cli::tui::app::{App, Focus, Input};
use sotto_cli::tui::ui;
use sotto_cli::worker::{Command, Connection, Event};
use sotto_client::store::Contact;
use sotto_client::{
    ConversationInfo, ConversationState, Member, Notice, NoticeKind, Receipt, ReceivedMessage,
    Sent, Trust, Updates, Verification,
};
use sotto_proto::{AccountId, GroupId, Handle, MessageId};

/// 13:05 UTC on some day.
const T: u64 = 1_700_000_000_000 - (1_700_000_000_000 % 86_400_000) + (13 * 60 + 5) * 60_000;

fn member(handle: &str, trust: Trust) -> Member {
    Member {
        handle: handle.into(),
        is_me: handle == "alice",
        trust,
    }
}

fn conv(n: u8, name: &str, is_group: bool, members: Vec<Member>) -> ConversationInfo {
    ConversationInfo {
        group: GroupId([n; 32]),
        name: name.into(),
        is_group,
        state: ConversationState::Active,
        last_activity_ms: T,
        members,
        disappear_after_s: None,
    }
}

fn msg(n: u8, group: u8, sender: &str, text: &str, minute: u64) -> ReceivedMessage {
    ReceivedMessage {
        id: MessageId([n; 16]),
        group: GroupId([group; 32]),
        conversation: "x".into(),
        sender: sender.into(),
        outgoing: sender == "alice",
        text: text.into(),
        sent_at_ms: T + minute * 60_000,
        received_at_ms: T + minute * 60_000,
        reply_to: None,
        edited_at_ms: None,
        deleted: false,
        unsupported: false,
        reactions: Vec::new(),
        delivered_to: 0,
        read_by: 0,
    }
}

fn key(app: &mut App, code: KeyCode) -> Vec<Command> {
    app.handle(
        Input::Key(KeyEvent::new(code, KeyModifiers::NONE)),
        T + 10 * 60_000,
    )
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn worker(app: &mut App, e: Event) -> Vec<Command> {
    app.handle(Input::Worker(e), T + 10 * 60_000)
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn check(app: &App, snapshot: Expect) {
    snapshot.assert_eq(&screen(app, 80, 24));
}

/// Alice with three conversations: bob wrote twice, the team once, carol not.
fn alice() -> App {
    let mut app = App::new("alice", true);
    worker(&mut app, Event::Connection(Connection::Online));
    worker(
        &mut app,
        Event::Conversations(vec![
            conv(
                1,
                "bob",
                false,
                vec![
                    member("alice", Trust::Verified),
                    member("bob", Trust::Verified),
                ],
            ),
            conv(
                2,
                "team",
                true,
                vec![
                    member("alice", Trust::Verified),
                    member("bob", Trust::Verified),
                    member("carol", Trust::Unverified),
                ],
            ),
            conv(
                3,
                "carol",
                false,
                vec![
                    member("alice", Trust::Verified),
                    member("carol", Trust::Unverified),
                ],
            ),
        ]),
    );
    worker(
        &mut app,
        Event::Updates(Updates {
            messages: vec![
                msg(1, 1, "bob", "are you there?", 0),
                msg(2, 1, "bob", "ping", 1),
                msg(3, 2, "carol", "standup in 5", 2),
            ],
            notices: vec![],
            warnings: vec![],
            receipts: Vec::new(),
        }),
    );
    app
}

/// Opens the conversation at the cursor and answers its history request.
fn open(app: &mut App, history: Vec<ReceivedMessage>, queued: HashSet<MessageId>) {
    let cmds = key(app, KeyCode::Enter);
    assert_eq!(cmds.len(), 2, "opening asks for the history once: {cmds:?}");
    assert!(matches!(cmds[0].op, Op::History { .. }), "{:?}", cmds[0].op);
    // What it shows is read.
    assert!(
        matches!(cmds[1].op, Op::MarkRead { .. }),
        "{:?}",
        cmds[1].op
    );
    worker(
        app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Messages(history, queued)),
        },
    );
}

#[test]
fn conversation_list_with_unread_counts() {
    let app = alice();
    check(
        &app,
        expect![[r#"
             sotto alice ● online
            ┌Conversations───────┐┌────────────────────────────────────────────────────────┐
            │  bob (2)           ││Select a conversation with ↑/↓ (j/k) and Enter.         │
            │ #team (1)          ││? shows the keys and commands.                          │
            │  carol             ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            └────────────────────┘└────────────────────────────────────────────────────────┘
            ┌Message (i or Tab to write)───────────────────────────────────────────────────┐
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            ↑↓/jk select · Enter open · / command · ? help · q quit
        "#]],
    );
}

#[test]
fn conversation_with_messages_delivery_states_notices_and_members() {
    let mut app = alice();
    key(&mut app, KeyCode::Char('j'));
    let mut queued = HashSet::new();
    queued.insert(MessageId([5; 16]));
    open(
        &mut app,
        vec![
            msg(3, 2, "carol", "standup in 5", 2),
            msg(4, 2, "alice", "coming", 3),
            msg(5, 2, "alice", "two\nlines", 4),
        ],
        queued,
    );
    assert_eq!(app.focus, Focus::Composer);
    assert_eq!(app.unread.get(&GroupId([2; 32])), None, "opening reads it");
    typed(&mut app, "on my way");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [&Op::Send {
            to: format!("#{}", GroupId([2; 32]).to_hex()),
            text: "on my way".into(),
            reply_to: None,
        }]
    );
    // A notice, and a message from the network carrying escape sequences,
    // learned at the same moment: the notice comes first (issue 16, item 9).
    worker(
        &mut app,
        Event::Updates(Updates {
            messages: vec![msg(6, 2, "bob", "\x1b[2Jgotcha\x1b]0;title\x07", 11)],
            notices: vec![Notice {
                conversation: GroupId([2; 32]),
                name: "team".into(),
                what: NoticeKind::MemberJoined {
                    handle: Handle::new("dave").unwrap(),
                },
                at_ms: T + 11 * 60_000,
            }],
            warnings: vec![],
            receipts: Vec::new(),
        }),
    );
    check(
        &app,
        expect![[r#"
             sotto alice ● online
            ┌Conversations───────┐┌#team · ✓bob ?carol─────────────────────────────────────┐
            │  bob (2)           ││13:07 carol: standup in 5                               │
            │›#team              ││13:08 alice: coming ✓                                   │
            │  carol             ││13:09 alice: two                                        │
            │                    ││      lines ⧗ queued                                    │
            │                    ││13:15 alice: on my way …                                │
            │                    ││13:16 — team: dave joined                               │
            │                    ││13:16 bob: \e[2Jgotcha\e]0;title\x07                    │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            └────────────────────┘└────────────────────────────────────────────────────────┘
            ┌Message (Enter sends, Alt+Enter new line, Esc list)───────────────────────────┐
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list
        "#]],
    );
    // The send completes: the mark turns into a check.
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Sent(Sent::Accepted(MessageId([7; 16])))),
        },
    );
    assert!(screen(&app, 80, 24).contains("on my way ✓"));
    // Wide enough, the members and their verification state show.
    let wide = screen(&app, 110, 24);
    assert!(wide.contains("  alice (you)"), "{wide}");
    assert!(wide.contains("✓ bob verified"), "{wide}");
    assert!(wide.contains("? carol unverified"), "{wide}");
}

/// A send the client could only queue (the server was out of reach) shows
/// as queued, not as failed and not as sent: the client says so with a
/// value, not an error text the app would have to recognise.
#[test]
fn a_queued_send_is_shown_queued() {
    let mut app = alice();
    key(&mut app, KeyCode::Char('j'));
    open(
        &mut app,
        vec![msg(3, 2, "carol", "standup in 5", 2)],
        HashSet::new(),
    );
    typed(&mut app, "later then");
    let cmds = key(&mut app, KeyCode::Enter);
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Sent(Sent::Queued(MessageId([9; 16])))),
        },
    );
    let s = screen(&app, 80, 24);
    assert!(s.contains("later then ⧗ queued"), "{s}");
}

#[test]
fn help_screen() {
    let mut app = alice();
    key(&mut app, KeyCode::Char('?'));
    check(
        &app,
        expect![[r#"
             ┌Help (Esc closes)───────────────────────────────────────────────────────────┐
            ┌│Keys                                                                        │┐
            ││↑↓ j k   select a conversation    Enter l   open it                         ││
            ││i Tab     write                    Esc       back to the list               ││
            ││Enter     send                     Alt+Enter new line                       ││
            ││PgUp PgDn scroll                   q Ctrl+C  quit                           ││
            ││↑ (empty) select a message         r Enter   reply to it (Esc cancels)      ││
            ││+ - w     react, unreact, who      e d       edit, delete (your own)        ││
            ││Commands                                                                    ││
            ││/group create NAME MEMBER...         create a group; you become its admin   ││
            ││/group add GROUP MEMBER...           add members (admins)                   ││
            ││/group remove GROUP MEMBER...        remove members (admins)                ││
            ││/group leave [GROUP]                 leave a group (default: the open one)  ││
            ││/group rename GROUP NAME             rename a group (admins)                ││
            ││/group promote GROUP MEMBER          make a member an admin (admins)        ││
            ││/verify HANDLE [confirm]             safety number; confirm: they match     ││
            ││/disappear [CONV] 30s|5m|2h|7d|off   disappearing messages                  ││
            ││/file PATH                           send a file to the open conversation   ││
            ││/search TEXT                         find stored messages with these words  ││
            └│/backup FILE                         encrypted backup; key shown once       │┘
            ┌│/msg HANDLE TEXT                     write to anyone (starts a conversation)│┐
            ││/quit                                leave                                  ││
            └└────────────────────────────────────────────────────────────────────────────┘┘
            ↑↓/jk select · Enter open · / command · ? help · q quit
        "#]],
    );
    key(&mut app, KeyCode::Esc);
    assert!(!app.help);
}

#[test]
fn verification_warning_and_safety_number() {
    let mut app = alice();
    worker(
        &mut app,
        Event::Conversations(vec![conv(
            1,
            "bob",
            false,
            vec![
                member("alice", Trust::Verified),
                member("bob", Trust::KeyChangedAfterVerify),
            ],
        )]),
    );
    open(
        &mut app,
        vec![msg(1, 1, "bob", "it's me, new phone", 0)],
        HashSet::new(),
    );
    typed(&mut app, "/verify bob");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [&Op::Verify {
            handle: "bob".into()
        }]
    );
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Verification(Verification {
                number: "123451234512345123451234512345678906789067890678906789067890".into(),
                contact: Contact {
                    handle: "bob".into(),
                    account: AccountId([9; 32]),
                    verified: false,
                    needs_confirm: true,
                    key_changed: true,
                },
            })),
        },
    );
    check(
        &app,
        expect![[r#"
             sotto alice ● online
            ┌Conversations───────┐┌bob · !bob──────────────────────────────────────────────┐
            │› bob               ││⚠ identity key changed: bob. Compare: /verify bob       │
            │                    ││13:05 bob: it's me, new phone                           │
            │                    ││                                                        │
            │                    ││                                                        │
            │      ┌Verify──────────────────────────────────────────────────────────┐      │
            │      │Safety number with bob:                                         │      │
            │      │                                                                │      │
            │      │12345 12345 12345 12345 12345 12345                             │      │
            │      │67890 67890 67890 67890 67890 67890                             │      │
            │      │                                                                │      │
            │      │WARNING: bob's identity key changed.                            │      │
            │      │Compare it with theirs in person or on a call you trust;        │      │
            │      │if it matches: /verify bob confirm                              │      │
            │      │Esc closes                                                      │      │
            │      │                                                                │      │
            │      └────────────────────────────────────────────────────────────────┘      │
            │                    ││                                                        │
            └────────────────────┘└────────────────────────────────────────────────────────┘
            ┌Message (Enter sends, Alt+Enter new line, Esc list)───────────────────────────┐
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list
        "#]],
    );
}

#[test]
fn connection_state_is_shown() {
    let mut app = alice();
    worker(
        &mut app,
        Event::Connection(Connection::Offline {
            reason: "server unreachable: 127.0.0.1:1: refused".into(),
            retry_in_s: 4,
        }),
    );
    let s = screen(&app, 80, 24);
    assert!(
        s.starts_with(" sotto alice ○ offline, retrying in 4s: server unreachable"),
        "{s}"
    );
    worker(&mut app, Event::Connection(Connection::Online));
    assert!(screen(&app, 80, 24).starts_with(" sotto alice ● online"));
}

#[test]
fn no_color_means_no_colors() {
    let colored = alice();
    let mut plain = App::new("alice", false);
    for e in [
        Event::Connection(Connection::Online),
        Event::Conversations(colored.conversations.clone()),
    ] {
        worker(&mut plain, e);
    }
    let colors = |app: &App| {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| ui::draw(app, f)).unwrap();
        t.backend()
            .buffer()
            .content()
            .iter()
            .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
            .count()
    };
    assert!(colors(&colored) > 0, "the colored app uses colors");
    assert_eq!(colors(&plain), 0, "NO_COLOR: not one colored cell");
}

#[test]
fn odd_keys_pastes_and_tiny_terminals_never_panic() {
    let mut app = alice();
    let codes = [
        KeyCode::Up,
        KeyCode::Down,
        KeyCode::Enter,
        KeyCode::Backspace,
        KeyCode::Left,
        KeyCode::Right,
        KeyCode::Delete,
        KeyCode::Home,
        KeyCode::End,
        KeyCode::PageUp,
        KeyCode::PageDown,
        KeyCode::Tab,
        KeyCode::Esc,
        KeyCode::Char('/'),
        KeyCode::Char('é'),
        KeyCode::Char('G'),
        KeyCode::F(5),
    ];
    for (i, c) in codes.iter().cycle().take(400).enumerate() {
        key(&mut app, *c);
        if i % 7 == 0 {
            app.handle(Input::Paste("multi\nline\x1b[31m ünï\r\n".into()), T);
        }
        if app.help || app.popup.is_some() {
            key(&mut app, KeyCode::Esc);
        }
        app.quit = false;
        for (w, h) in [(1, 1), (10, 3), (29, 7), (30, 8), (80, 24), (200, 60)] {
            screen(&app, w, h);
        }
    }
    // A pasted text keeps its lines and loses its escapes.
    let mut app = alice();
    key(&mut app, KeyCode::Char('i'));
    app.handle(Input::Paste("one\r\ntwo\x1b[2J".into()), T);
    assert_eq!(app.composer, "one\ntwo[2J");
    assert!(screen(&app, 80, 24).contains("│two[2J"));
    assert_eq!(screen(&app, 20, 5).trim(), "terminal too small");
}

#[test]
fn replying_from_the_keyboard_and_replies_with_their_quotes() {
    let mut app = alice();
    let mut unknown_reply = msg(8, 1, "bob", "did you get my letter?", 2);
    unknown_reply.reply_to = Some(MessageId([0xee; 16]));
    open(
        &mut app,
        vec![
            msg(1, 1, "bob", "are you there?\nit is about lunch", 0),
            msg(2, 1, "bob", "ping", 1),
            unknown_reply,
        ],
        HashSet::new(),
    );
    // ↑ in the empty composer selects the newest message, ↑ again older ones.
    key(&mut app, KeyCode::Up);
    assert_eq!(app.focus, Focus::Messages);
    assert_eq!(app.marked, Some(MessageId([8; 16])));
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Char('k'));
    key(&mut app, KeyCode::Up);
    assert_eq!(app.marked, Some(MessageId([1; 16])), "stops at the oldest");
    // r replies: the composer says to what; Esc cancels, keeping the focus.
    key(&mut app, KeyCode::Char('r'));
    assert_eq!(app.focus, Focus::Composer);
    assert_eq!(app.replying, Some(MessageId([1; 16])));
    assert!(
        screen(&app, 80, 24).contains("┌Replying to bob: are you there? (Esc cancels)"),
        "{}",
        screen(&app, 80, 24)
    );
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.replying, None);
    assert_eq!(app.focus, Focus::Composer);
    // Select again (↓ moves back towards the newest) and reply for real.
    for c in [KeyCode::Up, KeyCode::Up, KeyCode::Up, KeyCode::Down] {
        key(&mut app, c);
    }
    assert_eq!(app.marked, Some(MessageId([2; 16])));
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Char('r'));
    typed(&mut app, "yes, here");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [&Op::Send {
            to: "@bob".into(),
            text: "yes, here".into(),
            reply_to: Some(MessageId([1; 16]).to_hex()),
        }]
    );
    assert_eq!(
        app.replying, None,
        "the reply is sent: the composer is plain again"
    );
    // Bob's reply to a message alice doesn't have, and hers with its quote.
    check(
        &app,
        expect![[r#"
             sotto alice ● online
            ┌Conversations───────┐┌bob · ✓bob──────────────────────────────────────────────┐
            │› bob               ││13:05 bob: are you there?                               │
            │ #team (1)          ││      it is about lunch                                 │
            │  carol             ││13:06 bob: ping                                         │
            │                    ││      ╭ a message you don't have                        │
            │                    ││13:07 bob: did you get my letter?                       │
            │                    ││      ╭ bob: are you there?                             │
            │                    ││13:15 alice: yes, here …                                │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            └────────────────────┘└────────────────────────────────────────────────────────┘
            ┌Message (Enter sends, Alt+Enter new line, Esc list)───────────────────────────┐
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list
        "#]],
    );
    // In a narrow window a quote is cut to one line.
    let narrow = screen(&app, 40, 24);
    assert!(narrow.contains("│      ╭ bob: ar…│"), "{narrow}");
    // Selecting a message shows it reversed; the hint line tells the keys.
    key(&mut app, KeyCode::Up);
    assert_eq!(app.focus, Focus::Messages);
    assert_eq!(
        app.marked,
        Some(MessageId([8; 16])),
        "alice's is not sent yet"
    );
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| ui::draw(&app, f)).unwrap();
    let reversed_rows: Vec<u16> = (0..24)
        .filter(|y| {
            t.backend().buffer()[(30, *y)]
                .modifier
                .contains(ratatui::style::Modifier::REVERSED)
        })
        .collect();
    // The quote line and the message line of bob's reply (rows 5 and 6).
    assert_eq!(reversed_rows, [5, 6]);
    assert!(screen(&app, 80, 24).ends_with(
        "↑↓ select · r reply · +/- react · w who reacted · e edit · d delete · Esc back\n"
    ));
    key(&mut app, KeyCode::Esc);
    assert_eq!((app.focus, app.marked), (Focus::Composer, None));
    // Another conversation forgets a pending reply.
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Char('r'));
    assert!(app.replying.is_some());
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('j'));
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.replying, None);
}

/// C11: the hostile text the command line's test sends (title, clear
/// screen, bell, C1 CSI, bidirectional override, `\r` over the line), as a
/// message, as the sender's name and as a group's name, is drawn with its
/// controls as the same visible escapes `sotto receive` prints
/// (`sotto_cli::display::visible`), never as the characters themselves.
#[test]
fn hostile_text_is_drawn_with_its_controls_visible() {
    use sotto_cli::display::{HOSTILE, visible};
    let hostile_name = "ops\u{202e}txt.exe\x1b[5m";
    let mut app = App::new("alice", true);
    worker(&mut app, Event::Connection(Connection::Online));
    worker(
        &mut app,
        Event::Conversations(vec![conv(
            4,
            hostile_name,
            true,
            vec![
                member("alice", Trust::Verified),
                member("eve", Trust::Unverified),
            ],
        )]),
    );
    open(
        &mut app,
        vec![
            msg(1, 4, "eve", HOSTILE, 1),
            msg(2, 4, "eve\x1b[8m", "short\x07", 2),
        ],
        HashSet::new(),
    );
    let shown = screen(&app, 120, 10);
    let hidden: Vec<char> = shown
        .chars()
        .filter(|c| *c != '\n' && sotto_client::names::hides_text(*c))
        .collect();
    assert!(hidden.is_empty(), "drawn as is: {hidden:?}\n{shown}");
    // The message is wrapped; unwrapped, it is what `sotto receive` prints.
    let wide = screen(&app, 200, 10);
    assert!(
        wide.contains(&format!("eve: {}", visible(HOSTILE))),
        "{wide}"
    );
    expect![[r#"
         sotto alice ● online
        ┌Conversations───────┐┌#ops\u{202e}txt.exe\e[5m────────────────────────────────────────────────┐┌Members───────────────┐
        │›#ops\u{202e}txt.exe││13:06 eve: hi\e]0;pwned\x07\e[2J\u{9b}31m\u{202e}gnp.exe\rbank: send mon││  alice (you)         │
        │                    ││ey\x7f                                                                  ││? eve unverified      │
        │                    ││13:07 eve\e[8m: short\x07                                               ││                      │
        └────────────────────┘└────────────────────────────────────────────────────────────────────────┘└──────────────────────┘
        ┌Message (Enter sends, Alt+Enter new line, Esc list)───────────────────────────────────────────────────────────────────┐
        │                                                                                                                      │
        └──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┘
        Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list
    "#]].assert_eq(&shown);
}

/// Issue 16, item 9: a notice comes before the messages it came with,
/// also when the conversation is opened afterwards ("carol started this
/// conversation" above carol's first message, not below it).
#[test]
fn a_notice_comes_before_the_messages_it_came_with() {
    let mut app = alice();
    let g = GroupId([3; 32]);
    worker(
        &mut app,
        Event::Updates(Updates {
            messages: vec![msg(8, 3, "carol", "hi, it's carol", 5)],
            notices: vec![Notice {
                conversation: g,
                name: "carol".into(),
                what: NoticeKind::Started {
                    by: Handle::new("carol").unwrap(),
                },
                at_ms: T + 5 * 60_000,
            }],
            warnings: vec![],
            receipts: Vec::new(),
        }),
    );
    key(&mut app, KeyCode::Char('j'));
    key(&mut app, KeyCode::Char('j'));
    open(
        &mut app,
        vec![msg(8, 3, "carol", "hi, it's carol", 5)],
        HashSet::new(),
    );
    let s = screen(&app, 80, 24);
    let notice = s.find("carol started").expect(&s);
    let message = s.find("hi, it's carol").expect(&s);
    assert!(notice < message, "the notice is below the message:\n{s}");
}

/// Issue 16 from the keyboard: on a selected message, `+` reacts with
/// what is typed, `-` takes the reaction back, `e` edits one of alice's
/// own messages (the composer holds its text), `d` asks and `y` deletes
/// it for everyone; `e` and `d` refuse bob's. A changed message that comes
/// again replaces its line (edited, reactions, a tombstone), and receipts
/// move alice's ✓ to ✓✓ and "read".
#[test]
fn reacting_editing_and_deleting_from_the_keyboard() {
    let mut app = alice();
    open(
        &mut app,
        vec![
            msg(1, 1, "bob", "lunch?", 0),
            msg(2, 1, "alice", "at noon", 1),
        ],
        HashSet::new(),
    );
    let ops = |cmds: Vec<Command>| cmds.into_iter().map(|c| c.op).collect::<Vec<_>>();
    let bobs = MessageId([1; 16]).to_hex();
    let mine = MessageId([2; 16]).to_hex();
    // ↑ selects alice's (the newest), ↑ again bob's.
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    assert_eq!(app.marked, Some(MessageId([1; 16])));
    key(&mut app, KeyCode::Char('+'));
    assert_eq!(
        (app.focus, app.reacting),
        (Focus::Composer, Some(MessageId([1; 16])))
    );
    assert!(screen(&app, 80, 24).contains("┌React to bob: lunch? with an emoji"));
    typed(&mut app, "👍");
    assert_eq!(
        ops(key(&mut app, KeyCode::Enter)),
        [Op::React {
            to: "@bob".into(),
            message: bobs.clone(),
            emoji: Some("👍".into())
        }]
    );
    assert_eq!(app.reacting, None);
    // - takes it back; e and d refuse bob's message.
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    assert_eq!(
        ops(key(&mut app, KeyCode::Char('-'))),
        [Op::React {
            to: "@bob".into(),
            message: bobs,
            emoji: None
        }]
    );
    key(&mut app, KeyCode::Char('e'));
    assert_eq!(
        app.status.as_deref(),
        Some("only your own messages can be edited")
    );
    assert!(ops(key(&mut app, KeyCode::Char('d'))).is_empty());
    assert_eq!(
        app.status.as_deref(),
        Some("only your own messages can be deleted")
    );
    // e on her own: the composer holds its text, Enter sends the edit.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('e'));
    assert_eq!(
        (app.focus, app.composer.as_str()),
        (Focus::Composer, "at noon")
    );
    assert!(screen(&app, 80, 24).contains("┌Editing your message (Enter saves, Esc cancels)"));
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    typed(&mut app, "one");
    let cmds = key(&mut app, KeyCode::Enter);
    let edit_id = cmds[0].id;
    assert_eq!(
        ops(cmds),
        [Op::Edit {
            to: "@bob".into(),
            message: mine.clone(),
            text: "at one".into()
        }]
    );
    // Once it went, the history is read again.
    let again = worker(
        &mut app,
        Event::Done {
            id: edit_id,
            result: Ok(Outcome::Sent(Sent::Accepted(MessageId([3; 16])))),
        },
    );
    assert!(
        matches!(
            again[..],
            [Command {
                op: Op::History { .. },
                ..
            }]
        ),
        "{again:?}"
    );
    // d asks; any other key keeps it; y deletes.
    key(&mut app, KeyCode::Up);
    assert!(ops(key(&mut app, KeyCode::Char('d'))).is_empty());
    assert!(
        app.status
            .as_deref()
            .unwrap_or_default()
            .contains("y deletes")
    );
    assert!(ops(key(&mut app, KeyCode::Char('n'))).is_empty());
    assert_eq!(app.status.as_deref(), Some("kept"));
    key(&mut app, KeyCode::Char('d'));
    assert_eq!(
        ops(key(&mut app, KeyCode::Char('y'))),
        [Op::Delete {
            to: "@bob".into(),
            message: mine
        }]
    );
    // An edit begun and left for another conversation ends there.
    assert_eq!(app.marked, Some(MessageId([2; 16])));
    key(&mut app, KeyCode::Char('e'));
    assert!(app.editing.is_some());
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.composer, "", "Esc cancels the edit");
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Char('e'));
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    assert_eq!((app.open, app.editing), (Some(GroupId([2; 32])), None));
    // Back to bob.
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.open, Some(GroupId([1; 32])));
    // Changes another device made come again with the same id: the lines
    // are replaced, not added. Receipts move alice's marks.
    let mut edited = msg(1, 1, "bob", "lunch at noon?", 0);
    edited.edited_at_ms = Some(T);
    edited.reactions = vec![("👍".into(), 2), ("❤️".into(), 1)];
    let mut gone = msg(2, 1, "alice", "", 1);
    gone.deleted = true;
    worker(
        &mut app,
        Event::Updates(Updates {
            messages: vec![edited, gone],
            notices: vec![],
            warnings: vec![],
            receipts: vec![],
        }),
    );
    let s = screen(&app, 80, 24);
    assert!(s.contains("13:05 bob: lunch at noon? (edited)"), "{s}");
    // (The test backend pads each double-width emoji with a blank cell.)
    assert!(s.contains("      👍  2  ❤️  1"), "{s}");
    assert!(s.contains("13:06 alice: (message deleted)"), "{s}");
    assert!(!s.contains("lunch?") && !s.contains("at noon ✓"), "{s}");
    // A message of hers that is delivered, then read.
    open_with_receipts(&mut app);
}

/// Alice's message in #team gets receipts: ✓, then ✓✓, then ✓✓ read.
fn open_with_receipts(app: &mut App) {
    let g = GroupId([1; 32]);
    let id = MessageId([2; 16]);
    let mut mine = msg(2, 1, "alice", "x", 1);
    mine.deleted = false;
    mine.text = "see you".into();
    worker(
        app,
        Event::Updates(Updates {
            messages: vec![mine],
            notices: vec![],
            warnings: vec![],
            receipts: vec![],
        }),
    );
    assert!(screen(app, 80, 24).contains("alice: see you ✓"));
    for (delivered_to, read_by, mark) in [
        (1, 0, "alice: see you ✓✓"),
        (1, 1, "alice: see you ✓✓ read"),
    ] {
        worker(
            app,
            Event::Updates(Updates {
                messages: vec![],
                notices: vec![],
                warnings: vec![],
                receipts: vec![Receipt {
                    conversation: g,
                    id,
                    delivered_to,
                    read_by,
                }],
            }),
        );
        assert!(
            screen(app, 80, 24).contains(mark),
            "{}",
            screen(app, 80, 24)
        );
    }
}

/// `/search`: the results in a popup, newest first, with day, time,
/// conversation and sender, others' text cleaned; ↓ and Enter open the
/// selected one in its conversation, selected; nothing found says so.
#[test]
fn search_results_and_opening_one() {
    let mut app = alice();
    typed(&mut app, "/search standup");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [&Op::Search {
            text: "standup".into(),
            conversation: None
        }]
    );
    let hit = |n: u8, group: u8, conversation: &str, sender: &str, text: &str, minute: u64| {
        let mut m = msg(n, group, sender, text, minute);
        m.conversation = conversation.into();
        m
    };
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Messages(
                vec![
                    hit(5, 2, "team", "alice", "standup moved to 10", 24 * 60 + 1),
                    hit(3, 2, "team", "carol", "standup in 5", 2),
                    hit(4, 1, "bob", "bob", "skip the standup?\x1b[2J\nplease", 1),
                ],
                HashSet::new(),
            )),
        },
    );
    check(
        &app,
        expect![[r#"
             sotto alice ● online
            ┌Conversations───────┐┌────────────────────────────────────────────────────────┐
            │  bob (2)           ││Select a conversation with ↑/↓ (j/k) and Enter.         │
            │ #team (1)          ││? shows the keys and commands.                          │
            │  carol             ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │ ┌Search "standup": 3 found · Enter opens · Esc closes──────────────────────┐ │
            │ │2023-11-15 13:06 [team] alice: standup moved to 10                        │ │
            │ │2023-11-14 13:07 [team] carol: standup in 5                               │ │
            │ │2023-11-14 13:06 [bob] bob: skip the standup?\e[2J please                 │ │
            │ └──────────────────────────────────────────────────────────────────────────┘ │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            │                    ││                                                        │
            └────────────────────┘└────────────────────────────────────────────────────────┘
            ┌Message (Enter sends, Alt+Enter new line, Esc list)───────────────────────────┐
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            Enter send · Alt+Enter new line · ↑ select a message · /help · Esc list
        "#]],
    );
    // ↑ stays on the first; ↓ then Enter: carol's message, in the team's
    // conversation, selected.
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Down);
    let cmds = key(&mut app, KeyCode::Enter);
    assert!(app.popup.is_none());
    assert_eq!(app.open, Some(GroupId([2; 32])));
    assert_eq!(app.selected, 1, "the list follows");
    assert_eq!(
        (app.focus, app.marked),
        (Focus::Messages, Some(MessageId([3; 16])))
    );
    // Its history is loaded; what it shows is read.
    assert!(
        matches!(&cmds[..], [h, r] if matches!(h.op, Op::History { .. })
            && matches!(r.op, Op::MarkRead { .. })),
        "{cmds:?}"
    );
    // Nothing found; Esc closes.
    key(&mut app, KeyCode::Esc);
    typed(&mut app, "/search \"zebra NEAR(");
    let cmds = key(&mut app, KeyCode::Enter);
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Messages(vec![], HashSet::new())),
        },
    );
    let shown = screen(&app, 80, 24);
    assert!(
        shown.contains("Search \"\"zebra NEAR(\": nothing found · Esc closes"),
        "{shown}"
    );
    key(&mut app, KeyCode::Esc);
    assert!(app.popup.is_none());
}

/// `/backup FILE`: the backup is made by the worker; its recovery key is
/// shown in a popup that stays until Esc, and is not left in the status
/// line.
#[test]
fn a_backup_shows_its_recovery_key_once_in_a_popup() {
    let mut app = alice();
    typed(&mut app, "/backup /media/usb/alice.backup");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [&Op::CreateBackup {
            path: "/media/usb/alice.backup".into()
        }]
    );
    let key_text =
        "0a1b 2c3d 4e5f 6071 8293 a4b5 c6d7 e8f9 0a1b 2c3d 4e5f 6071 8293 a4b5 c6d7 e8f9";
    worker(
        &mut app,
        Event::Done {
            id: cmds[0].id,
            result: Ok(Outcome::Backup(
                sotto_client::backup::BackupSummary {
                    conversations: 3,
                    messages: 120,
                    contacts: 2,
                },
                zeroize::Zeroizing::new(key_text.to_owned()),
            )),
        },
    );
    let shown = screen(&app, 100, 30);
    assert!(shown.contains(key_text), "{shown}");
    assert!(
        shown.contains(
            "Backup written to /media/usb/alice.backup: 3 conversation(s), 120 message(s)."
        ),
        "{shown}"
    );
    assert!(shown.contains("shown this once"), "{shown}");
    assert!(app.status.is_none());
    key(&mut app, KeyCode::Esc);
    assert!(app.popup.is_none());
    assert!(!screen(&app, 100, 30).contains("0a1b 2c3d"));
}
