//! `sotto chat` in a real pseudo-terminal: tmux runs the real binary
//! against the real server, the test types keys into it and reads the
//! screen back. Alice selects bob, writes to him, bob receives it on the
//! command line; bob's answers appear on alice's screen live, also after
//! the server was killed and restarted under the running app.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto_test_support::{Profile, World, bin};

const DEADLINE: Duration = Duration::from_secs(60);

/// A tmux server of its own (own socket) with one 100x30 window.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(root: &std::path::Path, p: &Profile, width: u16, height: u16) -> Self {
        let t = Self {
            socket: root.join("tmux.sock"),
        };
        let cmd = format!(
            "exec {} --profile {} chat",
            bin("sotto").display(),
            p.dir.display()
        );
        let out = t
            .tmux()
            .args([
                "new-session",
                "-d",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .args(["-e", &format!("SOTTO_PASSPHRASE={}", p.passphrase)])
            .args(["-e", "TERM=xterm-256color"])
            .arg(cmd)
            .output()
            .expect("run tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    fn screen(&self) -> String {
        let out = self.tmux().args(["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends tmux key names (`Enter`, `j`, `Escape`).
    fn keys(&self, keys: &[&str]) {
        let ok = self.tmux().arg("send-keys").args(keys).status().unwrap();
        assert!(ok.success());
    }

    /// Types text literally.
    fn type_text(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-l", text])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    #[track_caller]
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited in vain for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[track_caller]
    fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn received_texts(p: &Profile) -> Vec<String> {
    p.sotto(&["receive", "--json"])
        .ok()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn alice_chats_with_bob_in_a_terminal_across_a_server_restart() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    bob.sotto(&["send", "alice", "hi alice"]).ok();
    carol.sotto(&["send", "alice", "carol here"]).ok();

    let t = Tmux::start(&w.root, &alice, 100, 30);
    // Newest activity first, with unread counts: carol, then bob.
    let s = t.wait_for("both conversations, online", |s| {
        s.contains("● online") && s.contains("carol (1)") && s.contains("bob (1)")
    });
    let (carol_at, bob_at) = (s.find("carol (1)").unwrap(), s.find("bob (1)").unwrap());
    assert!(
        carol_at < bob_at,
        "carol wrote last and is listed first:\n{s}"
    );

    // Select bob (one down), open, and read his message.
    t.keys(&["j", "Enter"]);
    t.wait_text("bob: hi alice");
    t.wait_text("? bob unverified");

    // Write to bob; his command line receives it.
    t.type_text("hello from the terminal");
    t.keys(&["Enter"]);
    t.wait_text("alice: hello from the terminal ✓");
    assert_eq!(received_texts(&bob), ["hello from the terminal"]);

    // Bob answers while the app is open: it appears live.
    bob.sotto(&["send", "alice", "got it, live"]).ok();
    t.wait_text("bob: got it, live");

    // The server dies: the app says so, then reconnects by itself.
    w.server.kill9();
    t.wait_text("offline");
    w.server.restart();
    t.wait_text("● online");
    bob.sotto(&["send", "alice", "after the restart"]).ok();
    t.wait_text("bob: after the restart");

    // A /-command: the safety number with bob.
    t.type_text("/verify bob");
    t.keys(&["Enter"]);
    t.wait_text("Safety number with bob:");
    t.keys(&["Escape"]);
    t.wait_for("the popup closed", |s| {
        !s.contains("Safety number with bob:")
    });

    // Quit: the app ends and the terminal is given back.
    // (Escape and q in one go would read as Alt+q.)
    t.keys(&["Escape"]);
    t.wait_text("Message (i or Tab to write)");
    t.keys(&["q"]);
    t.wait_for("the app to end", |s| !s.contains("Conversations"));
}
