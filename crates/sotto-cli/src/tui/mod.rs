//! `sotto chat`: the terminal chat app. State and its changes live in
//! [`app`] (no IO), drawing in [`ui`] (a pure function of the state), the
//! network in [`crate::worker`] (a task owning the client). This module
//! only wires them to a real terminal: raw mode, the alternate screen,
//! bracketed paste, a thread reading keys, and the draw loop.

pub mod app;
pub mod commands;
pub mod text;
pub mod ui;

use std::io::Write;

use ratatui::crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste};
use ratatui::crossterm::execute;
use sotto_client::Client;
use tokio::sync::mpsc;

use self::app::{App, Input};
use crate::worker;

/// The screen's clock: the app takes time as an argument, this reads it.
fn now_ms() -> u64 {
    sotto_client::Clock::now_ms(&sotto_client::SystemClock)
}

/// Whether colors are allowed: not when `NO_COLOR` is set and non-empty
/// (<https://no-color.org>).
pub fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the app on the terminal until the user quits.
pub async fn run(client: Client) -> anyhow::Result<()> {
    let mut app = App::new(client.handle().as_str(), color_allowed());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    let worker = tokio::spawn(worker::run(client, cmd_rx, ev_tx));

    let (key_tx, mut key_rx) = mpsc::channel(256);
    std::thread::spawn(move || {
        while let Ok(e) = event::read() {
            if key_tx.blocking_send(e).is_err() {
                break;
            }
        }
    });

    let mut terminal = ratatui::init();
    let _ = execute!(std::io::stdout(), EnableBracketedPaste);
    let result = async {
        loop {
            terminal.draw(|f| ui::draw(&app, f))?;
            let input = tokio::select! {
                e = key_rx.recv() => match e {
                    Some(event::Event::Key(k)) => Input::Key(k),
                    Some(event::Event::Paste(s)) => Input::Paste(s),
                    // A resize (or focus, mouse) only needs a redraw.
                    Some(_) => continue,
                    None => break,
                },
                e = ev_rx.recv() => match e {
                    Some(e) => Input::Worker(e),
                    None => break,
                },
            };
            for c in app.handle(input, now_ms()) {
                if cmd_tx.try_send(c).is_err() {
                    app.status = Some("busy: the previous commands are still running".into());
                }
            }
            if app.quit {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    let _ = execute!(std::io::stdout(), DisableBracketedPaste);
    ratatui::restore();
    let _ = std::io::stdout().flush();
    drop(cmd_tx);
    drop(ev_rx);
    let _ = worker.await;
    result
}
