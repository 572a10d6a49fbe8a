//! What travels inside MLS application messages. The id and the send time
//! are inside the encryption, so the server can neither change them nor
//! read the text.
//!
//! The content is one typed, versioned structure modelled on the IETF MIMI
//! content format (draft-ietf-mimi-content): [`Content`] with MIMI's
//! `replaces`, `inReplyTo`, `extensions` and a nested part that is a null
//! part, a single part (a disposition, a content type and its bytes) or an
//! external part (an attachment). Text, replies, reactions, edits,
//! deletions and files are all kinds of it; [`Body`] is what a client
//! makes of one. PROTOCOL.md lists where Sotto deviates from MIMI
//! (postcard instead of CBOR, no salt, no topic, the timer kept in the
//! group context instead of `expires`).
//!
//! Versioning: the wire form is an enum whose first three variants are the
//! bodies of protocol 4 and before (still read) and whose fourth is
//! [`Content`]. A later version adds variants after it, content types, or
//! dispositions; a client that meets one it does not know reads the id
//! and shows [`Body::Unsupported`] instead of dropping the message.

use serde::{Deserialize, Serialize};
use sotto_proto::{DirectoryRoot, MessageId};

/// The largest text (a message, a reply or an edit), in bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// The largest reaction, in bytes: one emoji, with its modifiers and
/// joiners (a family emoji is 25 bytes).
pub const MAX_REACTION: usize = 32;
/// The largest file name, in bytes.
pub const MAX_FILE_NAME: usize = 255;

/// The most message statuses one receipt carries.
pub const MAX_RECEIPTS: usize = 1000;

/// MIMI's content type of text.
pub const TEXT_PLAIN: &str = "text/plain;charset=utf-8";
/// MIMI's content type of a message status report (receipts).
pub const MESSAGE_STATUS: &str = "application/mimi-message-status";

/// MIMI's per-message statuses (those Sotto sends; a receiver ignores
/// the others).
pub mod status {
    /// A device of the recipient decrypted the message.
    pub const DELIVERED: u8 = 1;
    /// The recipient was shown the message.
    pub const READ: u8 = 2;
}

/// An application message.
#[derive(Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// Chosen by the sender; receivers show a message once per id.
    pub id: MessageId,
    /// The sender's clock, ms since the Unix epoch (informational only).
    pub sent_at_ms: u64,
    /// The content.
    pub body: Body,
    /// The newest root of the server's key directory the sender verified,
    /// carried in the MIMI extension [`DIRECTORY_ROOT`], so that members
    /// shown different directories find out.
    pub directory_root: Option<DirectoryRoot>,
}

/// The MIMI extension that carries the sender's newest verified key
/// directory root: epoch (u64 BE) ‖ hash (32 bytes).
pub const DIRECTORY_ROOT: &str = "sotto-directory-root";

fn root_extension(r: &DirectoryRoot) -> (String, Vec<u8>) {
    (DIRECTORY_ROOT.to_owned(), r.to_bytes().to_vec())
}

fn read_root_extension(extensions: &[(String, Vec<u8>)]) -> Option<DirectoryRoot> {
    let (_, v) = extensions.iter().find(|(k, _)| k == DIRECTORY_ROOT)?;
    DirectoryRoot::from_bytes(v)
}

/// What a message is, as a client shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum Body {
    /// Plain text.
    Text(String),
    /// An attachment: the server holds its ciphertext as a blob; the key
    /// travels only here, inside MLS.
    File(FileRef),
    /// Plain text replying to an earlier message of the same conversation,
    /// named by its id. The id may be one the receiver does not have (it
    /// joined later, or the message disappeared): receivers show the reply
    /// as a reply to a message they don't have.
    Reply {
        /// The id of the message replied to.
        to: MessageId,
        /// The text.
        text: String,
    },
    /// An emoji on a message. A sender has one reaction per message: a new
    /// one replaces it, and [`Body::Delete`] of the reaction's id takes it
    /// back (MIMI: a reaction is replaced by a null part).
    Reaction {
        /// The message reacted to.
        to: MessageId,
        /// The emoji.
        emoji: String,
    },
    /// The sender's new text for one of their own text messages.
    Edit {
        /// The message edited.
        of: MessageId,
        /// Its new text.
        text: String,
    },
    /// The sender deletes one of their own messages (or reactions) for
    /// everyone.
    Delete {
        /// The message or reaction deleted.
        of: MessageId,
    },
    /// Receipts (MIMI's message status report): each message's
    /// [`status`], as the sender of the receipt saw it.
    Receipt(Vec<(MessageId, u8)>),
    /// A kind this version does not know (a later version sent it).
    Unsupported,
}

impl Body {
    /// The id of the message this one replies to, if it is a reply.
    pub fn reply_to(&self) -> Option<MessageId> {
        match self {
            Self::Reply { to, .. } => Some(*to),
            _ => None,
        }
    }

    /// Refuses content over the limits or that could not be shown safely:
    /// the one check senders make before sending and receivers make before
    /// storing.
    pub fn check(&self) -> Result<(), Refused> {
        match self {
            Self::Text(t) | Self::Reply { text: t, .. } | Self::Edit { text: t, .. } => {
                if t.len() > MAX_TEXT {
                    return Err(Refused::TooLong);
                }
                if t.trim().is_empty() {
                    return Err(Refused::Empty);
                }
                Ok(())
            }
            Self::Reaction { emoji, .. } => {
                if emoji.len() > MAX_REACTION {
                    return Err(Refused::TooLong);
                }
                if emoji.is_empty() {
                    return Err(Refused::Empty);
                }
                // An emoji: no letters, spaces, controls or direction
                // marks that would make it a message of its own or move
                // text around; ASCII only in a keycap (1️⃣, #️⃣).
                let keycap = emoji.contains('\u{20e3}');
                if emoji.chars().any(|c| {
                    c.is_control()
                        || c.is_whitespace()
                        || c.is_alphabetic()
                        || (c.is_ascii() && !keycap)
                        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{61c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
                }) {
                    return Err(Refused::NotAnEmoji);
                }
                Ok(())
            }
            Self::File(f) => {
                if f.name.len() > MAX_FILE_NAME {
                    return Err(Refused::TooLong);
                }
                Ok(())
            }
            Self::Receipt(statuses) => {
                if statuses.len() > MAX_RECEIPTS {
                    return Err(Refused::TooLong);
                }
                if statuses.is_empty() {
                    return Err(Refused::Empty);
                }
                Ok(())
            }
            Self::Delete { .. } | Self::Unsupported => Ok(()),
        }
    }
}

/// Why content is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Over its size cap.
    #[error("over its size limit")]
    TooLong,
    /// Nothing to show.
    #[error("empty")]
    Empty,
    /// A reaction that is not an emoji.
    #[error("a reaction that is not an emoji")]
    NotAnEmoji,
}

/// MIMI's content: what one application message says (draft-ietf-mimi-content,
/// `MimiContent`). The field names are MIMI's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The sender's earlier message this one replaces: an edit (with a
    /// new part) or a deletion (with a null part).
    pub replaces: Option<MessageId>,
    /// The message this one answers: a reply, or the target of a
    /// reaction.
    pub in_reply_to: Option<MessageId>,
    /// MIMI's extensions: named values a later version may add. This
    /// version sends and reads [`DIRECTORY_ROOT`] and ignores the others.
    pub extensions: Vec<(String, Vec<u8>)>,
    /// MIMI's `nestedPart`.
    pub nested_part: NestedPart,
}

/// MIMI's disposition of a part (the IANA values of RFC 2183 and MIMI).
pub mod disposition {
    /// Not said (a receipt).
    pub const UNSPECIFIED: u8 = 0;
    /// Shown as the message.
    pub const RENDER: u8 = 1;
    /// A reaction to the message `in_reply_to` names.
    pub const REACTION: u8 = 2;
    /// An attachment.
    pub const ATTACHMENT: u8 = 6;
}

/// MIMI's `NestedPart` (without `language` and `partIndex`, which Sotto
/// does not use yet, and without multipart, which a later version may add
/// as a new variant).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NestedPart {
    /// MIMI's `nullPart`: no content (a deletion).
    Null,
    /// MIMI's `singlePart`.
    Single {
        /// How to show it ([`disposition`]).
        disposition: u8,
        /// Its media type, as MIMI names them ([`TEXT_PLAIN`]).
        content_type: String,
        /// Its bytes.
        content: Vec<u8>,
    },
    /// MIMI's `externalPart`: content held elsewhere (the server's blob
    /// store), with the key to open it.
    External {
        /// How to show it ([`disposition`]).
        disposition: u8,
        /// Where the file is and how to open it.
        file: FileRef,
    },
}

/// The wire form of a message's content. Append new variants at the end:
/// postcard names a variant by its index.
#[derive(Serialize, Deserialize)]
enum Wire {
    /// Protocol 4 and before: plain text.
    Text(String),
    /// Protocol 4 and before: a file.
    File(FileRef),
    /// Protocol 4 and before: a reply.
    Reply { to: MessageId, text: String },
    /// Typed content.
    Content(Content),
}

/// The variant index of [`Wire::Content`].
const CONTENT: u32 = 3;

impl Content {
    /// The content that says `body`.
    pub fn of(body: &Body) -> Self {
        let text = |t: &str, disposition| NestedPart::Single {
            disposition,
            content_type: TEXT_PLAIN.into(),
            content: t.as_bytes().to_vec(),
        };
        let (replaces, in_reply_to, nested_part) = match body {
            Body::Text(t) => (None, None, text(t, disposition::RENDER)),
            Body::Reply { to, text: t } => (None, Some(*to), text(t, disposition::RENDER)),
            Body::File(f) => (
                None,
                None,
                NestedPart::External {
                    disposition: disposition::ATTACHMENT,
                    file: f.clone(),
                },
            ),
            Body::Reaction { to, emoji } => (None, Some(*to), text(emoji, disposition::REACTION)),
            Body::Edit { of, text: t } => (Some(*of), None, text(t, disposition::RENDER)),
            Body::Delete { of } => (Some(*of), None, NestedPart::Null),
            Body::Receipt(statuses) => (
                None,
                None,
                NestedPart::Single {
                    disposition: disposition::UNSPECIFIED,
                    content_type: MESSAGE_STATUS.into(),
                    content: postcard::to_stdvec(statuses).unwrap_or_default(),
                },
            ),
            // Nothing this version would send; it reads as unsupported.
            Body::Unsupported => (None, None, NestedPart::Null),
        };
        Self {
            replaces,
            in_reply_to,
            extensions: Vec::new(),
            nested_part,
        }
    }

    /// What this content is, as this version understands it.
    pub fn body(self) -> Body {
        let Self {
            replaces,
            in_reply_to,
            nested_part,
            ..
        } = self;
        match (replaces, in_reply_to, nested_part) {
            (Some(of), _, NestedPart::Null) => Body::Delete { of },
            (
                replaces,
                in_reply_to,
                NestedPart::Single {
                    disposition: _,
                    content_type,
                    content,
                },
            ) if content_type == MESSAGE_STATUS && replaces.is_none() && in_reply_to.is_none() => {
                // A report that does not parse is an empty one: refused.
                match postcard::from_bytes(&content) {
                    Ok(statuses) => Body::Receipt(statuses),
                    Err(_) => Body::Receipt(Vec::new()),
                }
            }
            (
                replaces,
                in_reply_to,
                NestedPart::Single {
                    disposition,
                    content_type,
                    content,
                },
            ) if content_type == TEXT_PLAIN => {
                let Ok(t) = String::from_utf8(content) else {
                    return Body::Unsupported;
                };
                match (replaces, in_reply_to, disposition) {
                    (Some(of), _, disposition::RENDER) => Body::Edit { of, text: t },
                    (None, Some(to), disposition::RENDER) => Body::Reply { to, text: t },
                    (None, None, disposition::RENDER) => Body::Text(t),
                    (None, Some(to), disposition::REACTION) => Body::Reaction { to, emoji: t },
                    _ => Body::Unsupported,
                }
            }
            (
                None,
                None,
                NestedPart::External {
                    disposition: disposition::ATTACHMENT | disposition::RENDER,
                    file,
                },
            ) => Body::File(file),
            _ => Body::Unsupported,
        }
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content.
        write!(f, "Content({:?})", self.clone().body())
    }
}

impl std::fmt::Debug for NestedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => write!(f, "Null"),
            Self::Single { content, .. } => write!(f, "Single({} bytes)", content.len()),
            Self::External { file, .. } => write!(f, "External({file:?})"),
        }
    }
}

/// Where an attachment is and how to open it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The blob on the server.
    pub blob: sotto_proto::BlobId,
    /// The ChaCha20-Poly1305 key it is encrypted with (fresh per file).
    pub key: [u8; 32],
    /// The nonce.
    pub nonce: [u8; 12],
    /// SHA-256 of the ciphertext, checked before decrypting.
    pub sha256: [u8; 32],
    /// The file's name (a name only; receivers strip any path).
    pub name: String,
    /// The plaintext size in bytes.
    pub size: u64,
}

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "FileRef({:?}, {} bytes)", self.blob, self.size)
    }
}

impl Drop for FileRef {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content.
        match self {
            Self::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Self::File(r) => write!(f, "File({} bytes)", r.size),
            Self::Reply { to, text } => write!(f, "Reply({to:?}, {} bytes)", text.len()),
            Self::Reaction { to, emoji } => write!(f, "Reaction({to:?}, {} bytes)", emoji.len()),
            Self::Edit { of, text } => write!(f, "Edit({of:?}, {} bytes)", text.len()),
            Self::Delete { of } => write!(f, "Delete({of:?})"),
            Self::Receipt(s) => write!(f, "Receipt({} statuses)", s.len()),
            Self::Unsupported => write!(f, "Unsupported"),
        }
    }
}

impl std::fmt::Debug for AppMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print content.
        write!(f, "AppMessage({:?})", self.id)
    }
}

impl AppMessage {
    /// Encodes for MLS, as typed [`Content`].
    pub fn encode(&self) -> Vec<u8> {
        let mut content = Content::of(&self.body);
        if let Some(r) = &self.directory_root {
            content.extensions.push(root_extension(r));
        }
        postcard::to_stdvec(&(&self.id, self.sent_at_ms, Wire::Content(content)))
            .unwrap_or_default()
    }

    /// Decodes; `None` for bytes that are not an application message. A
    /// message of a later version (a wire variant, a content type or a
    /// disposition this one does not know, or content it cannot parse)
    /// keeps its id and reads as [`Body::Unsupported`].
    pub fn decode(b: &[u8]) -> Option<Self> {
        let ((id, sent_at_ms), rest): ((MessageId, u64), _) = postcard::take_from_bytes(b).ok()?;
        let (variant, _): (u32, _) = postcard::take_from_bytes(rest).ok()?;
        let mut directory_root = None;
        let body = match postcard::take_from_bytes::<Wire>(rest) {
            Ok((wire, [])) => match wire {
                Wire::Text(t) => Body::Text(t),
                Wire::File(f) => Body::File(f),
                Wire::Reply { to, text } => Body::Reply { to, text },
                Wire::Content(c) => {
                    directory_root = read_root_extension(&c.extensions);
                    c.body()
                }
            },
            _ if variant >= CONTENT => Body::Unsupported,
            _ => return None,
        };
        Some(Self {
            id,
            sent_at_ms,
            body,
            directory_root,
        })
    }

    /// The content as a protocol 4 client sent it (for tests of reading
    /// it).
    #[doc(hidden)]
    pub fn encode_legacy(&self) -> Option<Vec<u8>> {
        let wire = match &self.body {
            Body::Text(t) => Wire::Text(t.clone()),
            Body::File(f) => Wire::File(f.clone()),
            Body::Reply { to, text } => Wire::Reply {
                to: *to,
                text: text.clone(),
            },
            _ => return None,
        };
        postcard::to_stdvec(&(&self.id, self.sent_at_ms, wire)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> MessageId {
        MessageId([b; 16])
    }

    fn msg(body: Body) -> AppMessage {
        AppMessage {
            id: id(9),
            sent_at_ms: 1_700_000_000_000,
            body,
            directory_root: None,
        }
    }

    #[test]
    fn a_directory_root_travels_in_an_extension_and_others_are_ignored() {
        let root = DirectoryRoot {
            epoch: 7,
            hash: [3; 32],
        };
        let mut m = msg(Body::Text("hi".into()));
        m.directory_root = Some(root);
        let back = AppMessage::decode(&m.encode()).unwrap();
        assert_eq!(back.directory_root, Some(root));
        assert!(back.body == Body::Text("hi".into()));
        // None sent, none read; a malformed one is ignored.
        let plain = msg(Body::Text("hi".into()));
        assert_eq!(
            AppMessage::decode(&plain.encode()).unwrap().directory_root,
            None
        );
        let mut c = Content::of(&Body::Text("hi".into()));
        c.extensions.push((DIRECTORY_ROOT.into(), vec![1, 2, 3]));
        let bytes = postcard::to_stdvec(&(&id(9), 1u64, Wire::Content(c))).unwrap();
        let back = AppMessage::decode(&bytes).unwrap();
        assert_eq!(back.directory_root, None);
        assert!(back.body == Body::Text("hi".into()));
    }

    fn file() -> FileRef {
        FileRef {
            blob: sotto_proto::BlobId([3; 16]),
            key: [4; 32],
            nonce: [5; 12],
            sha256: [6; 32],
            name: "plan.pdf".into(),
            size: 1234,
        }
    }

    fn every_kind() -> Vec<Body> {
        vec![
            Body::Text("at noon".into()),
            Body::Reply {
                to: id(1),
                text: "yes, at noon".into(),
            },
            Body::File(file()),
            Body::Reaction {
                to: id(1),
                emoji: "👍🏽".into(),
            },
            Body::Edit {
                of: id(1),
                text: "at one".into(),
            },
            Body::Delete { of: id(1) },
            Body::Receipt(vec![(id(1), status::DELIVERED), (id(2), status::READ)]),
        ]
    }

    #[test]
    fn every_kind_round_trips_as_content() {
        for body in every_kind() {
            let m = msg(body);
            let wire = m.encode();
            // id (16 bytes), sent_at_ms (a 6-byte varint), then the variant.
            assert_eq!(wire[22], CONTENT as u8, "{:?}", m.body);
            let back = AppMessage::decode(&wire).expect("decodes");
            assert!(back == m, "{:?}", m.body);
            assert_eq!(m.body.check(), Ok(()), "{:?}", m.body);
            // Content never shows in debug output.
            let debug = format!("{:?} {:?}", back.body, Content::of(&back.body));
            for secret in ["noon", "one", "plan", "👍"] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
    }

    #[test]
    fn messages_of_protocol_4_still_read() {
        for body in [
            Body::Text("hi".into()),
            Body::File(file()),
            Body::Reply {
                to: id(1),
                text: "hi".into(),
            },
        ] {
            let m = msg(body);
            let wire = m.encode_legacy().expect("a protocol 4 kind");
            assert!(AppMessage::decode(&wire).expect("decodes") == m);
        }
        // The variant indices they had.
        let text = AppMessage {
            id: id(4),
            sent_at_ms: 5,
            body: Body::Text("hi".into()),
            directory_root: None,
        };
        assert_eq!(text.encode_legacy().unwrap()[17], 0);
        let reply = AppMessage {
            id: id(4),
            sent_at_ms: 5,
            body: Body::Reply {
                to: id(1),
                text: "hi".into(),
            },
            directory_root: None,
        }
        .encode_legacy()
        .unwrap();
        assert_eq!(reply[17], 2);
        // A truncated message is not one.
        assert!(AppMessage::decode(&reply[..reply.len() - 1]).is_none());
        assert!(AppMessage::decode(&text.encode()[..10]).is_none());
    }

    #[test]
    fn a_kind_of_a_later_version_is_unsupported_and_keeps_its_id() {
        let later = |c: Content| {
            let wire = postcard::to_stdvec(&(id(7), 5u64, Wire::Content(c))).unwrap();
            AppMessage::decode(&wire).expect("decodes")
        };
        let base = Content::of(&Body::Text("x".into()));
        // An unknown content type, disposition, or a combination that
        // means nothing here.
        let mut c = base.clone();
        c.nested_part = NestedPart::Single {
            disposition: disposition::RENDER,
            content_type: "text/markdown".into(),
            content: b"*x*".to_vec(),
        };
        assert_eq!(later(c).body, Body::Unsupported);
        let mut c = base.clone();
        c.nested_part = NestedPart::Single {
            disposition: 99,
            content_type: TEXT_PLAIN.into(),
            content: b"x".to_vec(),
        };
        assert_eq!(later(c).body, Body::Unsupported);
        let mut c = base.clone();
        c.replaces = Some(id(1));
        c.nested_part = Content::of(&Body::Reaction {
            to: id(1),
            emoji: "👍".into(),
        })
        .nested_part;
        assert_eq!(later(c).body, Body::Unsupported);
        // Text that is not UTF-8.
        let mut c = base.clone();
        c.nested_part = NestedPart::Single {
            disposition: disposition::RENDER,
            content_type: TEXT_PLAIN.into(),
            content: vec![0xff, 0xfe],
        };
        assert_eq!(later(c).body, Body::Unsupported);
        // Extensions are ignored.
        let mut c = base;
        c.extensions.push(("topic".into(), vec![1, 2]));
        assert_eq!(later(c).body, Body::Text("x".into()));
        // A wire variant after Content, with bytes this version cannot
        // parse: the id and time still read.
        let mut wire = postcard::to_stdvec(&(id(7), 5u64)).unwrap();
        wire.extend_from_slice(&[CONTENT as u8 + 1, 0xde, 0xad]);
        let m = AppMessage::decode(&wire).expect("decodes");
        assert_eq!((m.id, m.sent_at_ms, m.body), (id(7), 5, Body::Unsupported));
    }

    #[test]
    fn content_over_its_limits_is_refused() {
        let long = "x".repeat(MAX_TEXT + 1);
        for body in [
            Body::Text(long.clone()),
            Body::Reply {
                to: id(1),
                text: long.clone(),
            },
            Body::Edit {
                of: id(1),
                text: long,
            },
        ] {
            assert_eq!(body.check(), Err(Refused::TooLong));
        }
        assert_eq!(Body::Text(" \n".into()).check(), Err(Refused::Empty));
        let reaction = |e: &str| {
            Body::Reaction {
                to: id(1),
                emoji: e.into(),
            }
            .check()
        };
        for fine in ["👍", "👍🏽", "❤️", "👨‍👩‍👧‍👦", "🇫🇷", "1️⃣", "#️⃣"]
        {
            assert_eq!(reaction(fine), Ok(()), "{fine}");
        }
        assert_eq!(reaction(""), Err(Refused::Empty));
        assert_eq!(reaction(&"👍".repeat(9)), Err(Refused::TooLong));
        for bad in [
            "ok",
            "a",
            "1",
            "👍 👍",
            "\u{1b}[2J",
            "👍\u{202e}",
            "\u{7}",
            "ж",
        ] {
            assert_eq!(reaction(bad), Err(Refused::NotAnEmoji), "{bad:?}");
        }
        let receipt = |n: usize| Body::Receipt(vec![(id(1), status::READ); n]);
        assert_eq!(receipt(MAX_RECEIPTS).check(), Ok(()));
        assert_eq!(receipt(MAX_RECEIPTS + 1).check(), Err(Refused::TooLong));
        assert_eq!(receipt(0).check(), Err(Refused::Empty));
        // A report that does not parse reads as an empty one: refused.
        let garbled = Content {
            replaces: None,
            in_reply_to: None,
            extensions: Vec::new(),
            nested_part: NestedPart::Single {
                disposition: disposition::UNSPECIFIED,
                content_type: MESSAGE_STATUS.into(),
                content: vec![0xff; 3],
            },
        };
        assert_eq!(garbled.body().check(), Err(Refused::Empty));
        let mut f = file();
        f.name = "n".repeat(MAX_FILE_NAME + 1);
        assert_eq!(Body::File(f).check(), Err(Refused::TooLong));
    }
}
