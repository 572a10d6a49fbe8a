//! JSON-RPC 2.0 without IO: a line of input becomes a call or an error
//! response, a call's method and params become an [`Op`], and results,
//! errors and notifications become lines of output. See docs/JSON-RPC.md.

use serde_json::{Value, json};

use crate::ops::Op;
use crate::worker::Failure;

/// The version of the method set (docs/JSON-RPC.md); bumped on any
/// incompatible change.
pub const API_VERSION: &str = "1.5";

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object.
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Missing or mistyped params.
pub const INVALID_PARAMS: i64 = -32602;
/// The operation failed (the message says why).
pub const OPERATION_FAILED: i64 = -32000;

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// One line; never secrets.
    pub message: String,
    /// For a failed operation, what kind of failure it was
    /// (`sotto_client::ClientError::kind`), sent as `data.kind`.
    pub kind: Option<&'static str>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            kind: None,
        }
    }
}

/// A parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The request id; `None` for a notification (no answer wanted).
    pub id: Option<Value>,
    /// The method.
    pub method: String,
    /// The params (an object, or `null` when absent).
    pub params: Value,
}

/// Parses one line. An error carries the id to answer with (`null` when
/// the request was too broken to have one).
pub fn parse(line: &str) -> Result<Call, (Value, RpcError)> {
    let v: Value = serde_json::from_str(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let Value::Object(mut o) = v else {
        return Err((
            Value::Null,
            RpcError::new(
                INVALID_REQUEST,
                "a request is a JSON object (batches are not supported)",
            ),
        ));
    };
    let id = o.remove("id");
    let id_ok = matches!(
        id,
        None | Some(Value::Null | Value::String(_) | Value::Number(_))
    );
    let answer_id = if id_ok {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if o.get("jsonrpc") != Some(&json!("2.0")) || !id_ok {
        return Err((
            answer_id,
            RpcError::new(INVALID_REQUEST, "not a JSON-RPC 2.0 request"),
        ));
    }
    let Some(Value::String(method)) = o.remove("method") else {
        return Err((answer_id, RpcError::new(INVALID_REQUEST, "no method")));
    };
    let params = o.remove("params").unwrap_or(Value::Null);
    if !matches!(params, Value::Object(_) | Value::Null) {
        return Err((
            answer_id,
            RpcError::new(INVALID_PARAMS, "params are an object of named parameters"),
        ));
    }
    Ok(Call { id, method, params })
}

fn string(p: &Value, name: &str) -> Result<String, RpcError> {
    match p.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(RpcError::new(
            INVALID_PARAMS,
            format!("param {name:?} must be a string"),
        )),
    }
}

fn optional_string(p: &Value, name: &str) -> Result<Option<String>, RpcError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        _ => Err(RpcError::new(
            INVALID_PARAMS,
            format!("param {name:?} must be a string or null"),
        )),
    }
}

fn strings(p: &Value, name: &str) -> Result<Vec<String>, RpcError> {
    let bad = || {
        RpcError::new(
            INVALID_PARAMS,
            format!("param {name:?} must be a non-empty array of strings"),
        )
    };
    match p.get(name) {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// The methods the daemon answers itself, without the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `status`: API version, handle, connection state.
    Status,
}

/// What a method asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// An operation of the client.
    Op(Op),
    /// Answered by the daemon.
    Local(Local),
}

/// Maps a method and its params to what it asks for.
pub fn method(name: &str, p: &Value) -> Result<Method, RpcError> {
    let op = match name {
        "status" => return Ok(Method::Local(Local::Status)),
        "send" => Op::Send {
            to: string(p, "to")?,
            text: string(p, "text")?,
            // `reply_to` like the fields of the results; `replyTo` too.
            reply_to: match optional_string(p, "reply_to")? {
                Some(r) => Some(r),
                None => optional_string(p, "replyTo")?,
            },
        },
        // 1.4: reactions, edits, deletion for everyone.
        "react" => Op::React {
            to: string(p, "conversation")?,
            message: string(p, "message")?,
            emoji: optional_string(p, "emoji")?,
        },
        "reactions" => Op::Reactions {
            to: string(p, "conversation")?,
            message: string(p, "message")?,
        },
        "edit" => Op::Edit {
            to: string(p, "conversation")?,
            message: string(p, "message")?,
            text: string(p, "text")?,
        },
        "deleteForEveryone" => Op::Delete {
            to: string(p, "conversation")?,
            message: string(p, "message")?,
        },
        "markRead" => Op::MarkRead {
            conversation: string(p, "conversation")?,
        },
        "setReadReceipts" => Op::ReadReceipts {
            conversation: optional_string(p, "conversation")?,
            on: match p.get("enabled") {
                Some(Value::Bool(b)) => Some(*b),
                None | Some(Value::Null) => None,
                _ => {
                    return Err(RpcError::new(
                        INVALID_PARAMS,
                        "param \"enabled\" must be a boolean or null",
                    ));
                }
            },
        },
        "sendFile" => Op::SendFile {
            to: string(p, "to")?,
            path: string(p, "path")?.into(),
        },
        "listConversations" => Op::Conversations,
        "listGroups" => Op::Groups,
        "contacts" => Op::Contacts,
        "devices" => Op::Devices,
        "createBackup" => Op::CreateBackup {
            path: string(p, "path")?.into(),
        },
        "history" => Op::History {
            conversation: string(p, "conversation")?,
        },
        "search" => Op::Search {
            text: string(p, "text")?,
            conversation: optional_string(p, "conversation")?,
        },
        "groupCreate" => Op::GroupCreate {
            name: string(p, "name")?,
            members: strings(p, "members")?,
        },
        "groupAdd" => Op::GroupAdd {
            group: string(p, "group")?,
            members: strings(p, "members")?,
        },
        "groupRemove" => Op::GroupRemove {
            group: string(p, "group")?,
            members: strings(p, "members")?,
        },
        "groupLeave" => Op::GroupLeave {
            group: string(p, "group")?,
        },
        "block" => Op::Block {
            handle: string(p, "handle")?,
        },
        "unblock" => Op::Unblock {
            handle: string(p, "handle")?,
        },
        "blocked" => Op::Blocked,
        "groupRename" => Op::GroupRename {
            group: string(p, "group")?,
            name: string(p, "name")?,
        },
        "groupPromote" => Op::GroupPromote {
            group: string(p, "group")?,
            member: string(p, "member")?,
        },
        "verify" => Op::Verify {
            handle: string(p, "handle")?,
        },
        "verifyConfirm" => Op::VerifyConfirm {
            handle: string(p, "handle")?,
        },
        "disappear" => {
            let after = string(p, "after")?;
            let after_s = if after == "off" {
                None
            } else {
                Some(sotto_client::client::parse_duration(&after).ok_or_else(|| {
                    RpcError::new(
                        INVALID_PARAMS,
                        "param \"after\" is a duration (30s, 5m, 2h, 7d) or \"off\"",
                    )
                })?)
            };
            Op::Disappear {
                conversation: string(p, "conversation")?,
                after_s,
            }
        }
        other => {
            return Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("unknown method {:?}", truncate(other)),
            ));
        }
    };
    Ok(Method::Op(op))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A success response line.
pub fn result(id: &Value, result: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "result": result }).to_string()
}

/// An error response line.
pub fn error(id: &Value, e: &RpcError) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": match e.kind {
            Some(kind) => json!({ "code": e.code, "message": e.message, "data": { "kind": kind } }),
            None => json!({ "code": e.code, "message": e.message }),
        },
    })
    .to_string()
}

/// A notification line.
pub fn notification(method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "method": method, "params": params }).to_string()
}

/// The error for a failed operation, without a kind (the daemon's own).
pub fn failed(message: String) -> RpcError {
    RpcError::new(OPERATION_FAILED, message)
}

/// The error for an operation the client library refused or could not do.
pub fn failed_with(f: Failure) -> RpcError {
    RpcError {
        kind: Some(f.kind),
        ..RpcError::new(OPERATION_FAILED, f.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_input_gets_the_right_codes() {
        let code = |line: &str| parse(line).map(|_| 0).unwrap_or_else(|(_, e)| e.code);
        assert_eq!(code("{not json"), PARSE_ERROR);
        assert_eq!(code(""), PARSE_ERROR);
        assert_eq!(code("[1,2]"), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            INVALID_REQUEST
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            INVALID_PARAMS
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#), 0);
    }

    #[test]
    fn methods_check_their_params() {
        let p = json!({ "to": "bob", "text": 5 });
        assert_eq!(method("send", &p).unwrap_err().code, INVALID_PARAMS);
        assert_eq!(method("nope", &p).unwrap_err().code, METHOD_NOT_FOUND);
        let p = json!({ "conversation": "bob", "after": "5m" });
        assert_eq!(
            method("disappear", &p).unwrap(),
            Method::Op(Op::Disappear {
                conversation: "bob".into(),
                after_s: Some(300)
            })
        );
        let p = json!({ "to": "bob", "text": "yes", "replyTo": "5f0c" });
        assert_eq!(
            method("send", &p).unwrap(),
            Method::Op(Op::Send {
                to: "bob".into(),
                text: "yes".into(),
                reply_to: Some("5f0c".into())
            })
        );
        let p = json!({ "to": "bob", "text": "yes", "reply_to": "5f0c" });
        assert!(matches!(
            method("send", &p).unwrap(),
            Method::Op(Op::Send { reply_to: Some(r), .. }) if r == "5f0c"
        ));
        let p = json!({ "to": "bob", "text": "yes" });
        assert!(matches!(
            method("send", &p).unwrap(),
            Method::Op(Op::Send { reply_to: None, .. })
        ));
        let p = json!({ "to": "bob", "text": "yes", "replyTo": 7 });
        assert_eq!(method("send", &p).unwrap_err().code, INVALID_PARAMS);
        let p = json!({ "group": "g", "members": [] });
        assert_eq!(method("groupAdd", &p).unwrap_err().code, INVALID_PARAMS);
        let p = json!({ "text": "NEAR(\"x" });
        assert_eq!(
            method("search", &p).unwrap(),
            Method::Op(Op::Search {
                text: "NEAR(\"x".into(),
                conversation: None
            })
        );
        let p = json!({ "text": "x", "conversation": "bob" });
        assert!(matches!(
            method("search", &p).unwrap(),
            Method::Op(Op::Search { conversation: Some(c), .. }) if c == "bob"
        ));
        let p = json!({ "text": "x", "conversation": 1 });
        assert_eq!(method("search", &p).unwrap_err().code, INVALID_PARAMS);
        assert_eq!(
            method("search", &json!({})).unwrap_err().code,
            INVALID_PARAMS
        );
    }
}
