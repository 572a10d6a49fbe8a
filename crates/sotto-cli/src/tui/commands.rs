//! The composer's `/`-commands: the command line's actions with the same
//! names and arguments, where the open conversation fills in an omitted
//! conversation argument. Parsing only; [`crate::ops`] runs them.

use crate::ops::Op;

/// What a `/`-command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An operation for the worker.
    Op(Op),
    /// Show the help.
    Help,
    /// Leave the app.
    Quit,
}

/// The help text, one line per command.
pub const HELP: &[(&str, &str)] = &[
    (
        "/group create NAME MEMBER...",
        "create a group; you become its admin",
    ),
    ("/group add GROUP MEMBER...", "add members (admins)"),
    ("/group remove GROUP MEMBER...", "remove members (admins)"),
    (
        "/group leave [GROUP]",
        "leave a group (default: the open one)",
    ),
    ("/group rename GROUP NAME", "rename a group (admins)"),
    (
        "/group promote GROUP MEMBER",
        "make a member an admin (admins)",
    ),
    (
        "/verify HANDLE [confirm]",
        "safety number; confirm: they match",
    ),
    (
        "/disappear [CONV] 30s|5m|2h|7d|off",
        "disappearing messages",
    ),
    ("/file PATH", "send a file to the open conversation"),
    ("/search TEXT", "find stored messages with these words"),
    ("/backup FILE", "encrypted backup; key shown once"),
    (
        "/msg HANDLE TEXT",
        "write to anyone (starts a conversation)",
    ),
    ("/quit", "leave"),
];

/// Parses a line starting with `/`. `open` is the open conversation's
/// target (a handle, or `#<group id>`).
pub fn parse(line: &str, open: Option<&str>) -> Result<Action, String> {
    let line = line.trim();
    let words: Vec<&str> = line.split_whitespace().collect();
    let need_open = || open.map(str::to_owned).ok_or("open a conversation first");
    let owned = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let op = match words.as_slice() {
        ["/help" | "/?"] => return Ok(Action::Help),
        ["/quit" | "/q"] => return Ok(Action::Quit),
        ["/group", "create", name, members @ ..] if !members.is_empty() => Op::GroupCreate {
            name: (*name).to_owned(),
            members: owned(members),
        },
        ["/group", "add", group, members @ ..] if !members.is_empty() => Op::GroupAdd {
            group: (*group).to_owned(),
            members: owned(members),
        },
        ["/group", "remove", group, members @ ..] if !members.is_empty() => Op::GroupRemove {
            group: (*group).to_owned(),
            members: owned(members),
        },
        ["/group", "leave"] => Op::GroupLeave {
            group: need_open()?,
        },
        ["/group", "leave", group] => Op::GroupLeave {
            group: (*group).to_owned(),
        },
        ["/group", "rename", group, _, ..] => {
            let name = line
                .splitn(4, char::is_whitespace)
                .nth(3)
                .unwrap_or_default()
                .trim();
            Op::GroupRename {
                group: (*group).to_owned(),
                name: name.to_owned(),
            }
        }
        ["/group", "promote", group, member] => Op::GroupPromote {
            group: (*group).to_owned(),
            member: (*member).to_owned(),
        },
        ["/verify", handle] => Op::Verify {
            handle: (*handle).to_owned(),
        },
        ["/verify", handle, "confirm"] => Op::VerifyConfirm {
            handle: (*handle).to_owned(),
        },
        ["/disappear", duration] => Op::Disappear {
            conversation: need_open()?,
            after_s: duration_arg(duration)?,
        },
        ["/disappear", conversation, duration] => Op::Disappear {
            conversation: (*conversation).to_owned(),
            after_s: duration_arg(duration)?,
        },
        ["/file", _, ..] => Op::SendFile {
            to: need_open()?,
            path: line
                .split_once(char::is_whitespace)
                .map(|(_, p)| p.trim())
                .unwrap_or_default()
                .into(),
        },
        ["/backup", _, ..] => Op::CreateBackup {
            path: line
                .split_once(char::is_whitespace)
                .map(|(_, p)| p.trim())
                .unwrap_or_default()
                .into(),
        },
        ["/search", _, ..] => Op::Search {
            text: line
                .split_once(char::is_whitespace)
                .map(|(_, t)| t.trim())
                .unwrap_or_default()
                .to_owned(),
            conversation: None,
        },
        ["/msg", to, _, ..] => {
            let text = line
                .splitn(3, char::is_whitespace)
                .nth(2)
                .unwrap_or_default();
            Op::Send {
                to: (*to).to_owned(),
                text: text.trim().to_owned(),
                reply_to: None,
            }
        }
        [cmd, ..] => {
            let known = HELP.iter().any(|(u, _)| u.split(' ').next() == Some(*cmd));
            return Err(if known {
                format!("usage: {}", usage(cmd))
            } else {
                format!(
                    "unknown command {}: press ? for help",
                    super::text::clean(cmd)
                )
            });
        }
        [] => return Err("empty command".into()),
    };
    Ok(Action::Op(op))
}

fn usage(cmd: &str) -> String {
    HELP.iter()
        .filter(|(u, _)| u.split(' ').next() == Some(cmd))
        .map(|(u, _)| *u)
        .collect::<Vec<_>>()
        .join(" | ")
}

fn duration_arg(s: &str) -> Result<Option<u64>, String> {
    if s == "off" {
        return Ok(None);
    }
    sotto_client::client::parse_duration(s)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{} is not a duration like 30s, 5m, 2h, 7d, or off",
                super::text::clean(s)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_the_cli_operations() {
        assert_eq!(
            parse("/group add team bob carol", None),
            Ok(Action::Op(Op::GroupAdd {
                group: "team".into(),
                members: vec!["bob".into(), "carol".into()]
            }))
        );
        assert_eq!(
            parse("/disappear 5m", Some("bob")),
            Ok(Action::Op(Op::Disappear {
                conversation: "bob".into(),
                after_s: Some(300)
            }))
        );
        assert_eq!(
            parse("/verify bob confirm", None),
            Ok(Action::Op(Op::VerifyConfirm {
                handle: "bob".into()
            }))
        );
        assert_eq!(
            parse("/file /tmp/a b.txt", Some("#ab")),
            Ok(Action::Op(Op::SendFile {
                to: "#ab".into(),
                path: "/tmp/a b.txt".into()
            }))
        );
        assert_eq!(
            parse("/group rename team The A Team", None),
            Ok(Action::Op(Op::GroupRename {
                group: "team".into(),
                name: "The A Team".into()
            }))
        );
        assert_eq!(
            parse("/search  \"quoted\" NEAR(x ", Some("bob")),
            Ok(Action::Op(Op::Search {
                text: "\"quoted\" NEAR(x".into(),
                conversation: None
            }))
        );
        assert!(parse("/search", None).unwrap_err().starts_with("usage"));
        assert!(parse("/disappear 5m", None).is_err());
        assert!(parse("/disappear forever", Some("bob")).is_err());
        assert!(
            parse("/group add team", None)
                .unwrap_err()
                .starts_with("usage")
        );
        assert!(
            parse("/frobnicate", None)
                .unwrap_err()
                .starts_with("unknown")
        );
        assert!(parse("/", None).is_err());
    }
}
