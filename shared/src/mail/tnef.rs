//! Outlook `winmail.dat` (TNEF, `application/ms-tnef`): a small, strictly bounds-checked reader
//! of the files and the plain/HTML body inside, after Microsoft's [MS-OXTNEF], and the
//! expansion of such a part into the draft's attachments.
//!
//! Why our own reader: the only pure-Rust crate (`tnef` 0.1.1, 2019, unmaintained) rejects
//! real files (unknown attribute ids, attachments without dates) and reads no MAPI properties,
//! so it cannot give the long filename, MIME type or Content-ID; `ytnef` binds a C library.
//!
//! The stream: signature `0x223E9F78`, a 2-byte legacy key, then attributes
//! `level (1 = message, 2 = attachment) | id (u32) | length (u32) | data | checksum (u16)`.
//! `attAttachRendData` starts an attachment; `attAttachTitle` (8.3 name), `attAttachData`
//! (the bytes), `attAttachTransportFilename` and `attAttachment` (MAPI properties: long
//! filename, MIME tag, Content-ID, or the bytes in `PR_ATTACH_DATA_BIN`) describe it.
//! Message-level `attBody` and `attMsgProps` (`PR_BODY`, `PR_HTML`) give the body, used only
//! when the outer mail has none. 8-bit strings are in the `attOemCodepage` code page.
//!
//! Untrusted input: every length is checked against the bytes that are left before anything
//! is sliced, nothing is allocated from a claimed length (file contents stay borrowed from
//! the input), attachments are capped at [`MAX_ATTACHMENTS`]. Checksum mismatches are
//! tolerated (Outlook writes wrong ones; other readers warn and go on).
//!
//! What happens to the `winmail.dat` part itself: like osTicket, it is dropped once its files
//! are out, so agents see the files, not an attachment their browser cannot open. It stays, next
//! to whatever could be taken out of it, whenever dropping it could lose something: the stream
//! is truncated, has trailing bytes or a property list that breaks off; an attachment is an
//! embedded message (an attached Outlook item) or has no data; the message is not an ordinary
//! mail (meeting request, contact, task, report: their content is in properties not converted
//! here); its body is only compressed RTF and the outer mail has no body; or nothing at all came
//! out of it. A part that is not TNEF (no signature) stays as it was. Expansion never fails a
//! mail.
//!
//! Out of scope: embedded messages (`ATTACH_EMBEDDED_MSG`), the compressed RTF body
//! (`PR_RTF_COMPRESSED`), OLE objects beyond their raw bytes, and calendar/contact properties.
//!
//! [MS-OXTNEF]: https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-oxtnef/

use super::attachment_names;
use super::codec;
use encoding_rs::Encoding;

/// The TNEF stream signature (little-endian `78 9F 3E 22`).
const SIGNATURE: u32 = 0x223E_9F78;
/// Attribute level of message attributes.
const LEVEL_MESSAGE: u8 = 0x01;
/// Attribute level of attachment attributes.
const LEVEL_ATTACHMENT: u8 = 0x02;
/// More files than this in one TNEF: the rest stay in the kept `winmail.dat`.
pub const MAX_ATTACHMENTS: usize = 1_000;

// Attribute ids (the low 16 bits; the high 16 bits name the attribute's data type).
const ATT_MESSAGE_CLASS: u16 = 0x8008;
const ATT_BODY: u16 = 0x800C;
const ATT_ATTACH_DATA: u16 = 0x800F;
const ATT_ATTACH_TITLE: u16 = 0x8010;
const ATT_ATTACH_TRANSPORT_FILENAME: u16 = 0x9001;
const ATT_ATTACH_REND_DATA: u16 = 0x9002;
const ATT_MSG_PROPS: u16 = 0x9003;
const ATT_ATTACHMENT: u16 = 0x9005;
const ATT_OEM_CODEPAGE: u16 = 0x9007;

// MAPI property ids.
const PR_MESSAGE_CLASS: u16 = 0x001A;
const PR_BODY: u16 = 0x1000;
const PR_RTF_COMPRESSED: u16 = 0x1009;
const PR_HTML: u16 = 0x1013;
const PR_DISPLAY_NAME: u16 = 0x3001;
const PR_ATTACH_DATA: u16 = 0x3701;
const PR_ATTACH_FILENAME: u16 = 0x3704;
const PR_ATTACH_METHOD: u16 = 0x3705;
const PR_ATTACH_LONG_FILENAME: u16 = 0x3707;
const PR_ATTACH_MIME_TAG: u16 = 0x370E;
const PR_ATTACH_CONTENT_ID: u16 = 0x3712;
const PR_INTERNET_CPID: u16 = 0x3FDE;

// MAPI property types.
const PT_SHORT: u16 = 0x0002;
const PT_LONG: u16 = 0x0003;
const PT_FLOAT: u16 = 0x0004;
const PT_DOUBLE: u16 = 0x0005;
const PT_CURRENCY: u16 = 0x0006;
const PT_APPTIME: u16 = 0x0007;
const PT_ERROR: u16 = 0x000A;
const PT_BOOLEAN: u16 = 0x000B;
const PT_OBJECT: u16 = 0x000D;
const PT_I8: u16 = 0x0014;
const PT_STRING8: u16 = 0x001E;
const PT_UNICODE: u16 = 0x001F;
const PT_SYSTIME: u16 = 0x0040;
const PT_CLSID: u16 = 0x0048;
const PT_BINARY: u16 = 0x0102;
const MV_FLAG: u16 = 0x1000;
/// Property ids at or above this are named properties (a GUID and a name or number follow).
const NAMED_PROPERTY: u16 = 0x8000;

/// `PR_ATTACH_METHOD` value of an attached message (an Outlook item).
const ATTACH_EMBEDDED_MSG: u32 = 5;
/// IID_IMessage {00020307-0000-0000-C000-000000000046}: a `PT_OBJECT` that is a message.
const IID_IMESSAGE: [u8; 16] = [
    0x07, 0x03, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46,
];

/// What a TNEF stream holds, as far as this reader understands it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tnef<'a> {
    /// The files, in stream order; their bytes borrow the input.
    pub attachments: Vec<TnefAttachment<'a>>,
    /// The plain text body (`attBody`, else `PR_BODY`).
    pub body_text: Option<String>,
    /// The HTML body (`PR_HTML`).
    pub body_html: Option<String>,
    /// The message body is only in compressed RTF (not decoded here).
    pub rtf_body_only: bool,
    /// The message class (`PR_MESSAGE_CLASS`, else `attMessageClass`), e.g. `IPM.Note`;
    /// meeting requests, contacts, tasks and reports have others.
    pub message_class: Option<String>,
    /// Everything in the stream was understood and every attachment taken out: the stream
    /// ended cleanly after the last attribute, and no attachment was an embedded message,
    /// lacked its data or was over [`MAX_ATTACHMENTS`].
    pub complete: bool,
    /// Attributes whose checksum did not match (tolerated).
    pub checksum_mismatches: usize,
}

impl Tnef<'_> {
    /// An ordinary mail (`IPM.Note`, or no class given): everything in it that matters is its
    /// files and its body. Meeting requests, contacts, distribution lists, tasks and reports
    /// (`REPORT.IPM.Note.NDR`) carry more in properties this reader does not convert.
    pub fn is_plain_message(&self) -> bool {
        self.message_class.as_deref().is_none_or(|class| {
            let class = class.to_ascii_lowercase();
            class == "ipm.note"
                || class.starts_with("ipm.note.")
                || class == "ipm.microsoft mail.note"
                || class == "ipm"
        })
    }
}

/// One file inside a TNEF stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TnefAttachment<'a> {
    /// The long filename, else the transport filename, else the 8.3 title, decoded.
    pub filename: Option<String>,
    /// Lower-case MIME type: `PR_ATTACH_MIME_TAG`, else guessed from the filename.
    pub content_type: String,
    /// The file's bytes.
    pub data: &'a [u8],
    /// `PR_ATTACH_CONTENT_ID` without angle brackets.
    pub content_id: Option<String>,
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.remaining() {
            return None;
        }
        let slice = self.data.get(self.pos..self.pos + len)?;
        self.pos += len;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips the padding that aligns a value of `len` bytes to 4 (missing padding at the very
    /// end is tolerated).
    fn pad(&mut self, len: usize) {
        let pad = (4 - len % 4) % 4;
        self.pos = (self.pos + pad).min(self.data.len());
    }
}

/// Whether bytes start with the TNEF signature.
pub fn is_tnef_data(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&SIGNATURE.to_le_bytes()[..])
}

/// An attachment being collected (strings stay raw until the code page is known).
#[derive(Default)]
struct RawAttachment<'a> {
    title: Option<&'a [u8]>,
    transport_filename: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
    long_filename: Option<Text<'a>>,
    attach_filename: Option<Text<'a>>,
    display_name: Option<Text<'a>>,
    mime_tag: Option<Text<'a>>,
    content_id: Option<Text<'a>>,
    property_data: Option<&'a [u8]>,
    embedded_message: bool,
}

/// A MAPI string value: 8-bit in the stream's code page, or UTF-16LE.
#[derive(Clone, Copy)]
enum Text<'a> {
    Bytes8(&'a [u8]),
    Utf16(&'a [u8]),
}

/// One MAPI property value this reader looks at.
enum Value<'a> {
    /// `PT_STRING8` / `PT_UNICODE`.
    Text(Text<'a>),
    /// `PT_BINARY`.
    Binary(&'a [u8]),
    /// `PT_OBJECT` (the IID comes first in the data).
    Object(&'a [u8]),
    /// `PT_LONG` / `PT_SHORT` / `PT_BOOLEAN`.
    Int(u32),
    /// Anything else.
    Other,
}

/// Reads a TNEF stream. `None` when `bytes` is not TNEF (no signature); a stream that breaks
/// off later gives what was read up to there, with `complete == false`.
pub fn read(bytes: &[u8]) -> Option<Tnef<'_>> {
    let mut cur = Cursor::new(bytes);
    if cur.u32()? != SIGNATURE {
        return None;
    }
    cur.u16()?; // legacy key
    let mut tnef = Tnef {
        complete: true,
        ..Tnef::default()
    };
    let mut codepage: Option<u32> = None;
    let mut raw: Vec<RawAttachment<'_>> = Vec::new();
    let mut body_attr: Option<&[u8]> = None;
    let mut body_prop: Option<Text<'_>> = None;
    let mut html_prop: Option<(&[u8], bool)> = None;
    let mut html_cpid: Option<u32> = None;
    let mut has_rtf = false;
    let mut class_attr: Option<&[u8]> = None;
    let mut class_prop: Option<Text<'_>> = None;
    let mut dropped = false;
    while cur.remaining() > 0 {
        let Some((level, id, data)) = read_attribute(&mut cur, &mut tnef.checksum_mismatches)
        else {
            // Truncated, or garbage after the last attribute.
            tnef.complete = false;
            break;
        };
        match level {
            LEVEL_MESSAGE => match id {
                ATT_OEM_CODEPAGE => {
                    codepage = data
                        .get(..4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                ATT_BODY => body_attr = Some(data),
                ATT_MESSAGE_CLASS => class_attr = Some(data),
                ATT_MSG_PROPS => {
                    let ok = walk_properties(data, |prop, value| match (prop, value) {
                        (PR_BODY, Value::Text(text)) => body_prop = Some(text),
                        (PR_MESSAGE_CLASS, Value::Text(text)) => class_prop = Some(text),
                        (PR_HTML, Value::Binary(html)) => html_prop = Some((html, false)),
                        (PR_HTML, Value::Text(Text::Bytes8(html))) => {
                            html_prop = Some((html, false));
                        }
                        (PR_HTML, Value::Text(Text::Utf16(html))) => {
                            html_prop = Some((html, true));
                        }
                        (PR_INTERNET_CPID, Value::Int(cpid)) => html_cpid = Some(cpid),
                        (PR_RTF_COMPRESSED, _) => has_rtf = true,
                        _ => {}
                    });
                    if !ok {
                        tnef.complete = false;
                    }
                }
                _ => {}
            },
            LEVEL_ATTACHMENT => {
                if id == ATT_ATTACH_REND_DATA || raw.is_empty() {
                    if raw.len() >= MAX_ATTACHMENTS {
                        dropped = true;
                        continue;
                    }
                    raw.push(RawAttachment::default());
                } else if dropped {
                    continue;
                }
                let Some(att) = raw.last_mut() else { continue };
                match id {
                    ATT_ATTACH_DATA => att.data = Some(data),
                    ATT_ATTACH_TITLE => att.title = Some(data),
                    ATT_ATTACH_TRANSPORT_FILENAME => att.transport_filename = Some(data),
                    ATT_ATTACHMENT => {
                        let ok = walk_properties(data, |prop, value| match (prop, value) {
                            (PR_ATTACH_LONG_FILENAME, Value::Text(t)) => {
                                att.long_filename = Some(t);
                            }
                            (PR_ATTACH_FILENAME, Value::Text(t)) => att.attach_filename = Some(t),
                            (PR_DISPLAY_NAME, Value::Text(t)) => att.display_name = Some(t),
                            (PR_ATTACH_MIME_TAG, Value::Text(t)) => att.mime_tag = Some(t),
                            (PR_ATTACH_CONTENT_ID, Value::Text(t)) => att.content_id = Some(t),
                            (PR_ATTACH_METHOD, Value::Int(ATTACH_EMBEDDED_MSG)) => {
                                att.embedded_message = true;
                            }
                            (PR_ATTACH_DATA, Value::Binary(b)) => att.property_data = Some(b),
                            (PR_ATTACH_DATA, Value::Object(o)) => {
                                if o.starts_with(&IID_IMESSAGE) {
                                    att.embedded_message = true;
                                } else {
                                    att.property_data = o.get(16..);
                                }
                            }
                            _ => {}
                        });
                        if !ok {
                            tnef.complete = false;
                        }
                    }
                    _ => {}
                }
            }
            _ => {
                // Not a TNEF attribute level: the rest is not understood.
                tnef.complete = false;
                break;
            }
        }
    }
    if dropped {
        tnef.complete = false;
    }

    let encoding = codepage.and_then(encoding_for_codepage);
    for att in raw {
        if att.embedded_message {
            // An attached Outlook item: its properties are a message, not a file.
            tnef.complete = false;
            continue;
        }
        let Some(data) = att.data.or(att.property_data) else {
            tnef.complete = false;
            continue;
        };
        // Long filename, transport filename, 8.3 title, then the MAPI names; a blank one
        // falls back to the next.
        let filename = [
            att.long_filename.map(|t| decode_text(t, encoding)),
            att.transport_filename.map(|b| decode_8bit(b, encoding)),
            att.title.map(|b| decode_8bit(b, encoding)),
            att.attach_filename.map(|t| decode_text(t, encoding)),
            att.display_name.map(|t| decode_text(t, encoding)),
        ]
        .into_iter()
        .flatten()
        .map(|n| n.trim().to_string())
        .find(|n| !n.is_empty());
        let mime_tag = att
            .mime_tag
            .map(|t| decode_text(t, encoding).trim().to_ascii_lowercase())
            .filter(|t| valid_mime_type(t));
        let content_type = mime_tag.unwrap_or_else(|| {
            attachment_names::content_type_for(filename.as_deref().unwrap_or("")).to_string()
        });
        let content_id = att
            .content_id
            .map(|t| {
                codec::strip_angles(&decode_text(t, encoding))
                    .trim()
                    .to_string()
            })
            .filter(|c| !c.is_empty());
        tnef.attachments.push(TnefAttachment {
            filename,
            content_type,
            data,
            content_id,
        });
    }

    tnef.body_text = body_attr
        .map(|b| decode_8bit(b, encoding))
        .or_else(|| body_prop.map(|t| decode_text(t, encoding)))
        .map(|t| t.replace("\r\n", "\n").replace('\r', "\n"))
        .filter(|t| !t.trim().is_empty());
    tnef.body_html = html_prop
        .map(|(html, utf16)| {
            if utf16 {
                decode_text(Text::Utf16(html), None)
            } else {
                let cpid = html_cpid.and_then(encoding_for_codepage).or(encoding);
                let html = trim_nuls(html);
                codec::sniff_decode(html, cpid.map(Encoding::name), cpid).into_owned()
            }
        })
        .filter(|t| !t.trim().is_empty());
    tnef.message_class = class_prop
        .map(|t| decode_text(t, encoding))
        .or_else(|| class_attr.map(|b| decode_8bit(b, encoding)))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    tnef.rtf_body_only = has_rtf && tnef.body_text.is_none() && tnef.body_html.is_none();
    Some(tnef)
}

/// One attribute: `(level, id, data)`; `None` when it does not fit in what is left.
fn read_attribute<'a>(
    cur: &mut Cursor<'a>,
    checksum_mismatches: &mut usize,
) -> Option<(u8, u16, &'a [u8])> {
    let level = cur.u8()?;
    let id = cur.u32()?;
    let len = usize::try_from(cur.u32()?).ok()?;
    let data = cur.take(len)?;
    let sum = data
        .iter()
        .fold(0u16, |sum, &b| sum.wrapping_add(u16::from(b)));
    // A last attribute whose checksum was cut off is still taken (seen in real files).
    match cur.u16() {
        Some(checksum) if checksum == sum => {}
        Some(_) => *checksum_mismatches += 1,
        None if cur.remaining() == 0 => *checksum_mismatches += 1,
        None => return None,
    }
    Some((level, (id & 0xFFFF) as u16, data))
}

/// Walks a MAPI property list (`attMsgProps`, `attAttachment`), calling `visit` for each value.
/// Returns false when the list breaks off before its claimed count.
fn walk_properties<'a>(data: &'a [u8], mut visit: impl FnMut(u16, Value<'a>)) -> bool {
    let mut cur = Cursor::new(data);
    let Some(count) = cur.u32() else {
        return false;
    };
    for _ in 0..count {
        // Every property takes at least 4 bytes, so a huge claimed count ends here.
        let (Some(prop_type), Some(prop_id)) = (cur.u16(), cur.u16()) else {
            return false;
        };
        if prop_id >= NAMED_PROPERTY {
            // GUID, then kind 0 (a number) or 1 (a UTF-16 name with its length).
            if cur.take(16).is_none() {
                return false;
            }
            match cur.u32() {
                Some(0) => {
                    if cur.u32().is_none() {
                        return false;
                    }
                }
                Some(1) => {
                    let Some(len) = cur.u32().and_then(|l| usize::try_from(l).ok()) else {
                        return false;
                    };
                    if cur.take(len).is_none() {
                        return false;
                    }
                    cur.pad(len);
                }
                _ => return false,
            }
        }
        let multi = prop_type & MV_FLAG != 0;
        let base_type = prop_type & !MV_FLAG;
        let variable = matches!(base_type, PT_STRING8 | PT_UNICODE | PT_BINARY | PT_OBJECT);
        // Variable-size values always carry a value count; fixed-size ones only when
        // multi-valued.
        let values = if multi || variable {
            match cur.u32() {
                Some(n) => n,
                None => return false,
            }
        } else {
            1
        };
        for index in 0..values {
            let Some(value) = read_value(&mut cur, base_type) else {
                return false;
            };
            // Multi-valued properties are stepped over, not looked at.
            if index == 0 && !multi {
                visit(prop_id, value);
            }
        }
    }
    true
}

/// One value of type `base_type`; `None` when it does not fit or the type is unknown (the
/// size of an unknown type cannot be told, so the rest of the list cannot be read).
fn read_value<'a>(cur: &mut Cursor<'a>, base_type: u16) -> Option<Value<'a>> {
    let fixed = match base_type {
        PT_SHORT | PT_BOOLEAN => 2,
        PT_LONG | PT_FLOAT | PT_ERROR => 4,
        PT_DOUBLE | PT_CURRENCY | PT_APPTIME | PT_I8 | PT_SYSTIME => 8,
        PT_CLSID => 16,
        PT_STRING8 | PT_UNICODE | PT_BINARY | PT_OBJECT => {
            let len = usize::try_from(cur.u32()?).ok()?;
            let bytes = cur.take(len)?;
            cur.pad(len);
            return Some(match base_type {
                PT_STRING8 => Value::Text(Text::Bytes8(bytes)),
                PT_UNICODE => Value::Text(Text::Utf16(bytes)),
                PT_BINARY => Value::Binary(bytes),
                _ => Value::Object(bytes),
            });
        }
        _ => return None,
    };
    let bytes = cur.take(fixed)?;
    cur.pad(fixed);
    Some(match base_type {
        PT_SHORT | PT_BOOLEAN => Value::Int(u32::from(u16::from_le_bytes([bytes[0], bytes[1]]))),
        PT_LONG => Value::Int(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        _ => Value::Other,
    })
}

/// Bytes up to the first NUL (TNEF strings are NUL-terminated, often padded with more).
fn trim_nuls(bytes: &[u8]) -> &[u8] {
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len());
    &bytes[..end]
}

fn decode_8bit(bytes: &[u8], encoding: Option<&'static Encoding>) -> String {
    let bytes = trim_nuls(bytes);
    match encoding {
        // UTF-8 first (valid UTF-8 is rarely anything else), then the stream's code page.
        Some(enc) => codec::sniff_decode(bytes, Some(enc.name()), Some(enc)).into_owned(),
        None => codec::sniff_decode(bytes, None, None).into_owned(),
    }
}

fn decode_text(text: Text<'_>, encoding: Option<&'static Encoding>) -> String {
    match text {
        Text::Bytes8(bytes) => decode_8bit(bytes, encoding),
        Text::Utf16(bytes) => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        }
    }
}

/// The encoding of a Windows code page number, for the ones `encoding_rs` knows.
fn encoding_for_codepage(codepage: u32) -> Option<&'static Encoding> {
    let label: &[u8] = match codepage {
        65001 => b"utf-8",
        1250..=1258 | 874 => return Encoding::for_label(format!("windows-{codepage}").as_bytes()),
        28591..=28606 => {
            return Encoding::for_label(format!("iso-8859-{}", codepage - 28590).as_bytes());
        }
        // OEM code pages of DOS-era Outlook versions: their letters are close to 1252's.
        437 | 850 | 858 => b"windows-1252",
        932 => b"shift_jis",
        936 => b"gbk",
        949 => b"euc-kr",
        950 => b"big5",
        866 => b"ibm866",
        20866 => b"koi8-r",
        21866 => b"koi8-u",
        51932 => b"euc-jp",
        50220..=50222 => b"iso-2022-jp",
        54936 => b"gb18030",
        10000 => b"macintosh",
        _ => return None,
    };
    Encoding::for_label(label)
}

/// `type/subtype` of plain token characters.
fn valid_mime_type(value: &str) -> bool {
    let Some((ty, sub)) = value.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    token(ty) && token(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one attribute with a correct checksum.
    fn attribute(level: u8, id: u32, data: &[u8]) -> Vec<u8> {
        let mut out = vec![level];
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        let sum = data.iter().fold(0u16, |s, &b| s.wrapping_add(u16::from(b)));
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_le_bytes().to_vec();
        out.extend_from_slice(&[0x01, 0x00]);
        out.extend(attribute(1, 0x0008_9006, &[0, 0, 1, 0]));
        out.extend(attribute(1, 0x0006_9007, &[0xE4, 0x04, 0, 0, 0, 0, 0, 0]));
        out
    }

    fn one_file(title: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = header();
        out.extend(attribute(
            2,
            0x0006_9002,
            &[1, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0],
        ));
        out.extend(attribute(2, 0x0001_8010, title));
        out.extend(attribute(2, 0x0006_800F, data));
        out
    }

    #[test]
    fn reads_a_minimal_stream_with_a_1252_title() {
        let stream = one_file(b"Gr\xfc\xdfe.txt\0", b"hello");
        let tnef = read(&stream).expect("tnef");
        assert!(tnef.complete);
        assert_eq!(tnef.attachments.len(), 1);
        let file = &tnef.attachments[0];
        assert_eq!(file.filename.as_deref(), Some("Grüße.txt"));
        assert_eq!(file.content_type, "text/plain");
        assert_eq!(file.data, b"hello");
    }

    #[test]
    fn long_filename_mime_tag_and_content_id_come_from_the_mapi_properties() {
        let mut props = Vec::new();
        props.extend_from_slice(&4u32.to_le_bytes());
        let mut string8 = |id: u16, value: &[u8]| {
            props.extend_from_slice(&PT_STRING8.to_le_bytes());
            props.extend_from_slice(&id.to_le_bytes());
            props.extend_from_slice(&1u32.to_le_bytes());
            props.extend_from_slice(&(value.len() as u32).to_le_bytes());
            props.extend_from_slice(value);
            props.resize(props.len() + (4 - value.len() % 4) % 4, 0);
        };
        string8(PR_ATTACH_LONG_FILENAME, b"quarterly report.pdf\0");
        string8(PR_ATTACH_MIME_TAG, b"Application/PDF\0");
        string8(PR_ATTACH_CONTENT_ID, b"<img1@x>\0");
        // A named property (kind 1, a name) the reader must step over.
        props.extend_from_slice(&PT_LONG.to_le_bytes());
        props.extend_from_slice(&0x8001u16.to_le_bytes());
        props.extend_from_slice(&[0xAB; 16]);
        props.extend_from_slice(&1u32.to_le_bytes());
        props.extend_from_slice(&6u32.to_le_bytes());
        props.extend_from_slice(b"x\0y\0\0\0\0\0");
        props.extend_from_slice(&7u32.to_le_bytes());
        let mut stream = one_file(b"QUARTE~1.PDF\0", b"%PDF-1.4");
        stream.extend(attribute(2, 0x0006_9005, &props));
        let tnef = read(&stream).expect("tnef");
        assert!(tnef.complete, "{tnef:?}");
        let file = &tnef.attachments[0];
        assert_eq!(file.filename.as_deref(), Some("quarterly report.pdf"));
        assert_eq!(file.content_type, "application/pdf");
        assert_eq!(file.content_id.as_deref(), Some("img1@x"));
    }

    #[test]
    fn a_huge_claimed_length_is_not_allocated_and_marks_the_stream_incomplete() {
        let mut stream = header();
        stream.push(2);
        stream.extend_from_slice(&0x0006_800Fu32.to_le_bytes());
        stream.extend_from_slice(&u32::MAX.to_le_bytes());
        stream.extend_from_slice(b"short");
        let tnef = read(&stream).expect("signature is fine");
        assert!(!tnef.complete);
        assert!(tnef.attachments.is_empty());
    }

    #[test]
    fn a_huge_property_count_ends_with_the_data() {
        let mut props = u32::MAX.to_le_bytes().to_vec();
        props.extend_from_slice(&PT_LONG.to_le_bytes());
        props.extend_from_slice(&PR_ATTACH_METHOD.to_le_bytes());
        props.extend_from_slice(&1u32.to_le_bytes());
        let mut seen = 0;
        assert!(!walk_properties(&props, |_, _| seen += 1));
        assert_eq!(seen, 1);
    }

    #[test]
    fn every_truncation_of_a_stream_reads_without_panicking() {
        let stream = one_file(b"a.txt\0", b"0123456789");
        for end in 0..stream.len() {
            // A cut at an attribute boundary reads as a shorter, complete stream; a cut inside
            // the data never yields the file.
            if let Some(t) = read(&stream[..end]) {
                assert!(t.attachments.iter().all(|a| a.data == b"0123456789"));
                if end < stream.len() - 2 {
                    assert!(t.attachments.is_empty());
                }
            }
        }
        assert!(read(b"not tnef").is_none());
    }

    #[test]
    fn codepages_map_to_encodings() {
        assert_eq!(
            encoding_for_codepage(1252).map(Encoding::name),
            Some("windows-1252")
        );
        assert_eq!(
            encoding_for_codepage(1251).map(Encoding::name),
            Some("windows-1251")
        );
        assert_eq!(
            encoding_for_codepage(28592).map(Encoding::name),
            Some("ISO-8859-2")
        );
        assert_eq!(
            encoding_for_codepage(932).map(Encoding::name),
            Some("Shift_JIS")
        );
        assert_eq!(encoding_for_codepage(1), None);
    }
}
