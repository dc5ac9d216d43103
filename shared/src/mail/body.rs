//! The MIME walk: which leaves are the text body, which the HTML body, which are attachments,
//! with charset and transfer-encoding repairs per leaf.

use super::attachment_names::{content_type_for, rfc2231_continued_name, terminal_filename};
use super::codec::{self, base64_complete, lenient_base64, strip_angles};
use super::draft::Attachment;
use super::tnef;
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use std::borrow::Cow;

/// What the walk collects from one message.
#[derive(Default)]
pub(crate) struct Bodies {
    /// Inline text/plain leaves, in order.
    pub text_parts: Vec<String>,
    /// The HTML body.
    pub html: Option<String>,
    /// Every other leaf.
    pub attachments: Vec<Attachment>,
    /// Decoded contents of `message/delivery-status` parts.
    pub delivery_status: Vec<String>,
    /// Header blocks of returned mail (`message/rfc822` heads, `text/rfc822-headers`).
    pub returned_headers: Vec<String>,
    /// Decoded contents, one per entry of `attachments`, when asked for.
    pub contents: Option<Vec<Vec<u8>>>,
    /// The plain text body inside the first `winmail.dat` (TNEF), for a mail without one.
    pub tnef_body_text: Option<String>,
    /// The HTML body inside the first `winmail.dat` (TNEF), for a mail without one.
    pub tnef_body_html: Option<String>,
}

/// Which body kinds a subtree may contribute (alternatives contribute only one each).
#[derive(Clone, Copy)]
struct Mode {
    text: bool,
    html: bool,
}

const BOTH: Mode = Mode {
    text: true,
    html: true,
};

/// Depth guard for hostile nesting (mail-parser limits nesting too; this keeps our recursion
/// bounded whatever it returns).
const MAX_DEPTH: usize = 64;

/// Walks `message` (parsed from `raw`) and sorts its leaves.
pub(crate) fn collect(
    message: &Message<'_>,
    raw: &[u8],
    charset_hint: Option<&'static encoding_rs::Encoding>,
    keep_contents: bool,
) -> Bodies {
    let mut walk = Walk {
        message,
        raw,
        charset_hint,
        walked: vec![false; message.parts.len()],
        out: Bodies {
            contents: keep_contents.then(Vec::new),
            ..Bodies::default()
        },
    };
    if !message.parts.is_empty() {
        walk.part(0, BOTH, 0);
    }
    for attachment in &mut walk.out.attachments {
        attachment.filename = attachment
            .filename
            .take()
            .and_then(|name| terminal_filename(&name));
    }
    walk.out
}

struct Walk<'m, 'x> {
    message: &'m Message<'x>,
    raw: &'m [u8],
    charset_hint: Option<&'static encoding_rs::Encoding>,
    /// Parts already walked, by id. A MIME tree has each part once, but on malformed input
    /// mail-parser can list a part under several parents; walking it again each time made a
    /// 6 KB fuzz input take minutes (2^depth paths). Each part now counts once, where it is
    /// first reached.
    walked: Vec<bool>,
    out: Bodies,
}

/// The part's media type and subtype in lower case (borrowed when already lower case, as they
/// nearly always are); `text/plain` when the part has no Content-Type.
fn lower_type<'p>(part: &'p MessagePart<'_>) -> (Cow<'p, str>, Cow<'p, str>) {
    fn lower(s: &str) -> Cow<'_, str> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        }
    }
    match part.content_type() {
        Some(ct) => (lower(ct.ctype()), lower(ct.subtype().unwrap_or(""))),
        None => (Cow::Borrowed("text"), Cow::Borrowed("plain")),
    }
}

impl Walk<'_, '_> {
    fn get(&self, id: u32) -> Option<&MessagePart<'_>> {
        self.message.parts.get(id as usize)
    }

    fn part(&mut self, id: u32, mode: Mode, depth: usize) {
        let Some(part) = self.message.parts.get(id as usize) else {
            return;
        };
        if depth > MAX_DEPTH || std::mem::replace(&mut self.walked[id as usize], true) {
            return;
        }
        if let PartType::Multipart(children) = &part.body {
            let (_, subtype) = lower_type(part);
            let children: Vec<u32> = children.clone();
            match subtype.as_ref() {
                "alternative" => self.alternative(&children, mode, depth),
                "related" => self.related(part, &children, mode, depth),
                "signed" => {
                    for (i, child) in children.iter().enumerate() {
                        let m = if i == 0 { mode } else { NONE_BODY };
                        self.part(*child, m, depth + 1);
                    }
                }
                _ => {
                    for child in children {
                        self.part(child, mode, depth + 1);
                    }
                }
            }
            return;
        }
        self.leaf(part, mode);
    }

    /// Whether the subtree at `id` has a `text/<want>` body leaf. `seen` keeps a malformed
    /// tree (a part under several parents) from being searched once per path.
    fn contains(&self, id: u32, want: &str, depth: usize, seen: &mut Vec<bool>) -> bool {
        let Some(part) = self.get(id) else {
            return false;
        };
        if depth > MAX_DEPTH || std::mem::replace(&mut seen[id as usize], true) {
            return false;
        }
        match &part.body {
            PartType::Multipart(children) => children
                .iter()
                .any(|c| self.contains(*c, want, depth + 1, seen)),
            _ => {
                let (t, s) = lower_type(part);
                t == "text" && s == want && !is_attachment_like(part)
            }
        }
    }

    /// multipart/alternative: the plain branch gives the text, the HTML branch the HTML, and
    /// both give their attachments.
    fn alternative(&mut self, children: &[u32], mode: Mode, depth: usize) {
        // One `seen` per search: in a tree the children's subtrees are disjoint anyway, and a
        // part shared by two of them (malformed input) does not hold the leaf if the first
        // search of it did not find one.
        let mut seen = vec![false; self.message.parts.len()];
        let text_child = children
            .iter()
            .copied()
            .find(|c| self.contains(*c, "plain", depth, &mut seen));
        seen.fill(false);
        let html_child = children
            .iter()
            .copied()
            .rev()
            .find(|c| self.contains(*c, "html", depth, &mut seen));
        for &child in children {
            let m = if Some(child) == text_child {
                Mode {
                    text: mode.text,
                    html: mode.html && html_child.is_none(),
                }
            } else if Some(child) == html_child {
                Mode {
                    text: mode.text && text_child.is_none(),
                    html: mode.html,
                }
            } else {
                NONE_BODY
            };
            self.part(child, m, depth + 1);
        }
    }

    /// multipart/related: the root (the `start` part, else the first) is the body; the rest
    /// (inline images) are attachments.
    fn related(&mut self, part: &MessagePart<'_>, children: &[u32], mode: Mode, depth: usize) {
        let start = part
            .content_type()
            .and_then(|ct| ct.attribute("start"))
            .map(|s| s.trim().trim_matches(['<', '>']).to_string());
        let root = start
            .and_then(|s| {
                children.iter().copied().find(|c| {
                    self.get(*c).and_then(|p| p.content_id()).map(strip_angles) == Some(s.as_str())
                })
            })
            .or_else(|| children.first().copied());
        for &child in children {
            let m = if Some(child) == root { mode } else { NONE_BODY };
            self.part(child, m, depth + 1);
        }
    }

    fn leaf(&mut self, part: &MessagePart<'_>, mode: Mode) {
        let (ctype, subtype) = lower_type(part);
        let attachment_like = is_attachment_like(part);
        if ctype == "text" && subtype == "plain" && !attachment_like {
            if mode.text {
                let text = self.text_of(part);
                let text = self.extract_uuencoded(text);
                self.out.text_parts.push(text);
                return;
            }
            if mode.html {
                // The plain twin inside an HTML alternative branch: not an attachment.
                return;
            }
        }
        // An inline HTML leaf is the HTML body when it is the first one and no plain text came
        // before it outside an alternative; otherwise it is an extra HTML part (attachment).
        if ctype == "text"
            && subtype == "html"
            && !attachment_like
            && mode.html
            && self.out.html.is_none()
            && (!mode.text || self.out.text_parts.is_empty())
        {
            self.out.html = Some(self.text_of(part));
            return;
        }
        if ctype == "message"
            && (subtype == "delivery-status" || subtype == "global-delivery-status")
        {
            let bytes = self.decoded_bytes(part);
            self.out.delivery_status.push(utf8_lossy_string(&bytes));
        }
        let mut returned_subject = None;
        if (ctype == "message" && (subtype == "rfc822" || subtype == "global"))
            || (ctype == "text" && (subtype == "rfc822-headers" || subtype == "global-headers"))
        {
            let bytes = self.decoded_bytes(part);
            let head_end = find_header_end(&bytes);
            let head = utf8_lossy_string(&bytes[..head_end]);
            returned_subject = subject_of(&head);
            self.out.returned_headers.push(head);
        }
        let mut attachment = self.attachment(part, &ctype, &subtype);
        if attachment.filename.is_none() {
            // A returned or forwarded message is one attachment, named after its subject.
            attachment.filename = returned_subject.map(|subject| format!("{subject}.eml"));
        }
        if self.is_empty_leftover(part, &attachment) {
            return;
        }
        if is_tnef_attachment(&attachment) {
            let bytes = self.decoded_bytes(part).into_owned();
            expand_tnef_into(attachment, &bytes, &mut self.out);
            return;
        }
        self.out.attachments.push(attachment);
        if self.out.contents.is_some() {
            let bytes = self.decoded_bytes(part).into_owned();
            if let Some(contents) = self.out.contents.as_mut() {
                contents.push(bytes);
            }
        }
    }

    /// Old mailers (Lotus Notes, early Outlook) put files into the text as uuencode blocks
    /// (`begin 644 name` … `end`): those become attachments and leave the text.
    fn extract_uuencoded(&mut self, text: String) -> String {
        if !text.contains("begin ") {
            return text;
        }
        let mut kept = String::with_capacity(text.len());
        let mut lines = text.split_inclusive('\n').peekable();
        let mut found = false;
        while let Some(line) = lines.next() {
            let Some(name) = uu_begin(line) else {
                kept.push_str(line);
                continue;
            };
            let mut size = 0u64;
            let mut decoded = Vec::new();
            let keep = self.out.contents.is_some();
            let mut body_lines = Vec::new();
            let mut closed = false;
            for l in lines.by_ref() {
                body_lines.push(l);
                let t = l.trim_end();
                if t == "end" {
                    closed = true;
                    break;
                }
                if let Some(&first) = t.as_bytes().first() {
                    let n = u64::from((first.wrapping_sub(b' ')) & 0x3f);
                    if first != b'`' {
                        size += n;
                        if keep {
                            uudecode_line(t.as_bytes(), &mut decoded);
                        }
                    }
                }
                if body_lines.len() > 2_000_000 {
                    break;
                }
            }
            if !closed {
                // Not a uuencode block after all: keep the text as it was.
                kept.push_str(line);
                for l in body_lines {
                    kept.push_str(l);
                }
                continue;
            }
            found = true;
            if let Some(contents) = self.out.contents.as_mut() {
                contents.push(decoded);
            }
            self.out.attachments.push(Attachment {
                content_type: content_type_for(&name).to_string(),
                filename: Some(name),
                size,
                inline: false,
                content_id: None,
            });
        }
        if found { kept } else { text }
    }

    /// A leaf with nothing in it and nothing to name it (no filename, no Content-ID): an
    /// empty part before a closing boundary, a blank alternative. Not an attachment. A
    /// returned message or report part counts even when empty (nothing was returned).
    fn is_empty_leftover(&self, part: &MessagePart<'_>, attachment: &Attachment) -> bool {
        if attachment.filename.is_some()
            || attachment.content_id.is_some()
            || attachment.content_type.starts_with("message/")
            || attachment.content_type.ends_with("rfc822-headers")
        {
            return false;
        }
        attachment.size == 0
            || (attachment.size <= 64
                && attachment.content_type.starts_with("text/")
                && self
                    .decoded_bytes(part)
                    .iter()
                    .all(|b| b.is_ascii_whitespace()))
    }

    fn attachment(&self, part: &MessagePart<'_>, ctype: &str, subtype: &str) -> Attachment {
        let size = match &part.body {
            PartType::Binary(b) | PartType::InlineBinary(b) if self.decoded_cleanly(part) => {
                b.len()
            }
            _ => self.decoded_bytes(part).len(),
        } as u64;
        let content_id = part
            .content_id()
            .map(|c| strip_angles(c).to_string())
            .filter(|c| !c.is_empty());
        let inline = match part.content_disposition() {
            Some(d) if d.ctype().eq_ignore_ascii_case("inline") => true,
            Some(d) if d.ctype().eq_ignore_ascii_case("attachment") => false,
            _ => content_id.is_some(),
        };
        Attachment {
            filename: self.filename(part),
            content_type: if subtype.is_empty() {
                ctype.to_string()
            } else {
                format!("{ctype}/{subtype}")
            },
            size,
            inline,
            content_id,
        }
    }

    /// The decoded filename; raw 8-bit names in an undeclared charset are re-read with the
    /// sniffed charset.
    fn filename(&self, part: &MessagePart<'_>) -> Option<String> {
        let name = part.attachment_name()?;
        let name = if codec::looks_misdecoded(name) {
            self.reparse_header_name(part)
                .unwrap_or_else(|| name.to_string())
        } else {
            name.to_string()
        };
        let name = codec::fix_embedded_iso_2022_jp(name.trim())
            .trim()
            .to_string();
        (!name.is_empty()).then_some(name)
    }

    fn reparse_header_name(&self, part: &MessagePart<'_>) -> Option<String> {
        let head = self
            .raw
            .get(part.offset_header as usize..part.offset_body as usize)?;
        if let Some(name) = rfc2231_continued_name(head) {
            return Some(name);
        }
        let text = codec::sniff_decode(head, None, self.charset_hint);
        let reparsed = MessageParser::default().parse_headers(text.as_bytes())?;
        reparsed.root_part().attachment_name().map(str::to_string)
    }

    /// Whether mail-parser's decoding of the part can be used as is: it reported no encoding
    /// problem and the part is not base64 without its `=` padding (mail-parser then silently
    /// drops the last one or two bytes). Padded base64 is clean whatever its length: decoding
    /// it again would hold a second copy of every attachment whose size is not a multiple of 3.
    fn decoded_cleanly(&self, part: &MessagePart<'_>) -> bool {
        if part.is_encoding_problem {
            return false;
        }
        let is_base64 = part
            .content_transfer_encoding()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("base64"));
        if !is_base64 {
            return true;
        }
        let body = self
            .raw
            .get(
                part.offset_body as usize
                    ..(part.offset_end as usize).max(part.offset_body as usize),
            )
            .unwrap_or_default();
        base64_complete(body)
    }

    /// The part's content with the transfer encoding undone (leniently: base64 of invalid
    /// length keeps every full quantum), before any charset conversion.
    fn decoded_bytes<'r>(&'r self, part: &'r MessagePart<'_>) -> Cow<'r, [u8]> {
        if self.decoded_cleanly(part) {
            match &part.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    return Cow::Borrowed(b.as_ref());
                }
                PartType::Message(_) => {}
                _ => {}
            }
        }
        let Some(body) = self.raw.get(
            part.offset_body as usize..(part.offset_end as usize).max(part.offset_body as usize),
        ) else {
            return Cow::Borrowed(&[]);
        };
        match part
            .content_transfer_encoding()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("base64") => Cow::Owned(lenient_base64(body)),
            Some("quoted-printable") => {
                mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                    .map_or(Cow::Borrowed(body), Cow::Owned)
            }
            _ => Cow::Borrowed(body),
        }
    }

    /// Text of a text leaf, charset-repaired, with LF line ends.
    fn text_of(&self, part: &MessagePart<'_>) -> String {
        let declared = part
            .content_type()
            .and_then(|ct| ct.attribute("charset"))
            .map(str::to_string);
        let text: Cow<'_, str> = match &part.body {
            PartType::Text(t) | PartType::Html(t) if self.decoded_cleanly(part) => {
                let declared_utf8 = declared.as_deref().is_some_and(|d| {
                    d.eq_ignore_ascii_case("utf-8") || d.eq_ignore_ascii_case("utf8")
                });
                if declared.as_deref().is_some_and(codec::is_iso_2022_jp_label) {
                    Cow::Owned(codec::decode_iso_2022_jp(&self.decoded_bytes(part)))
                } else if codec::looks_misdecoded(t) || (!t.is_ascii() && !declared_utf8) {
                    let bytes = self.decoded_bytes(part);
                    if bytes.is_ascii()
                        || (!codec::looks_misdecoded(t)
                            && !codec::has_c1_controls(t)
                            && std::str::from_utf8(&bytes).is_err())
                    {
                        Cow::Borrowed(t.as_ref())
                    } else {
                        Cow::Owned(
                            codec::sniff_decode(&bytes, declared.as_deref(), self.charset_hint)
                                .into_owned(),
                        )
                    }
                } else if t.contains("\x1b$") {
                    codec::fix_embedded_iso_2022_jp(t)
                } else {
                    Cow::Borrowed(t.as_ref())
                }
            }
            _ => {
                let bytes = self.decoded_bytes(part);
                if declared.as_deref().is_some_and(codec::is_iso_2022_jp_label) {
                    Cow::Owned(codec::decode_iso_2022_jp(&bytes))
                } else {
                    Cow::Owned(
                        codec::sniff_decode(&bytes, declared.as_deref(), self.charset_hint)
                            .into_owned(),
                    )
                }
            }
        };
        let text = lf_text(text);
        let flowed = part.content_type().filter(|ct| {
            ct.attribute("format")
                .is_some_and(|f| f.trim().eq_ignore_ascii_case("flowed"))
        });
        match flowed {
            Some(ct) => unflow(
                &text,
                ct.attribute("delsp")
                    .is_some_and(|d| d.trim().eq_ignore_ascii_case("yes")),
            ),
            None => text,
        }
    }
}

/// RFC 3676 `format=flowed`: a line ending in a space continues on the next line of the same
/// quote depth (with `delsp=yes` that space is deleted, for languages without word spaces);
/// space-stuffing is undone. `-- ` (the signature separator) never flows.
fn unflow(text: &str, delsp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<(usize, String)> = None;
    let emit = |out: &mut String, depth: usize, content: &str| {
        for _ in 0..depth {
            out.push('>');
        }
        if depth > 0 && !content.is_empty() {
            out.push(' ');
        }
        out.push_str(content);
        out.push('\n');
    };
    for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
        let depth = line.bytes().take_while(|&b| b == b'>').count();
        let rest = &line[depth..];
        let content = rest.strip_prefix(' ').unwrap_or(rest);
        let soft = content.ends_with(' ') && content != "-- ";
        let piece = if soft && delsp {
            &content[..content.len() - 1]
        } else {
            content
        };
        match open.take() {
            Some((d, mut buf)) if d == depth => {
                buf.push_str(piece);
                open = Some((d, buf));
            }
            Some((d, buf)) => {
                emit(&mut out, d, &buf);
                open = Some((depth, piece.to_string()));
            }
            None => open = Some((depth, piece.to_string())),
        }
        if !soft && let Some((d, buf)) = open.take() {
            emit(&mut out, d, &buf);
        }
    }
    if let Some((d, buf)) = open.take() {
        emit(&mut out, d, &buf);
    }
    if !text.ends_with('\n') {
        out.pop();
    }
    out
}

const NONE_BODY: Mode = Mode {
    text: false,
    html: false,
};

/// A text part that is an attachment all the same: `Content-Disposition: attachment` or a
/// filename.
fn is_attachment_like(part: &MessagePart<'_>) -> bool {
    part.content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
        || part.attachment_name().is_some_and(|n| !n.trim().is_empty())
}

/// Appends the bytes of one uuencoded line (length character, then 4-for-3 groups).
fn uudecode_line(line: &[u8], out: &mut Vec<u8>) {
    let Some((&len, rest)) = line.split_first() else {
        return;
    };
    let want = usize::from(len.wrapping_sub(b' ') & 0x3f);
    let start = out.len();
    for group in rest.chunks(4) {
        let v: Vec<u8> = group.iter().map(|c| c.wrapping_sub(b' ') & 0x3f).collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        out.push((get(0) << 2) | (get(1) >> 4));
        out.push((get(1) << 4) | (get(2) >> 2));
        out.push((get(2) << 6) | get(3));
    }
    // Trailing blanks (zero values) stripped by a mailer: the missing bytes are zero.
    out.resize(start + want, 0);
}

/// `begin 644 file name.jpg` → `file name.jpg`.
fn uu_begin(line: &str) -> Option<String> {
    let rest = line.trim_end().strip_prefix("begin ")?;
    let (mode, name) = rest.split_once(' ')?;
    if !(3..=4).contains(&mode.len()) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// `String::from_utf8_lossy`, with std's fast validation first: the lossy path checks byte by
/// byte, and these blocks (delivery reports, returned headers) are almost always valid.
fn utf8_lossy_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The decoded, unfolded `Subject` of a header block, for naming the message it heads; path
/// separators become `_` (the name keeps the whole subject). `None` when there is none.
fn subject_of(head: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in head.lines() {
        match value.as_mut() {
            None => {
                if let Some((name, rest)) = line.split_once(':')
                    && name.trim_end().eq_ignore_ascii_case("subject")
                {
                    value = Some(rest.to_string());
                }
            }
            Some(v) if line.starts_with([' ', '\t']) => {
                v.push(' ');
                v.push_str(line.trim());
            }
            Some(_) => break,
        }
    }
    let raw = value?;
    let decoded = codec::decode_encoded_words(&raw).unwrap_or(raw);
    let subject: String = codec::fix_embedded_iso_2022_jp(&decoded)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    (!subject.is_empty()).then_some(subject)
}

fn find_header_end(bytes: &[u8]) -> usize {
    memchr::memmem::find(bytes, b"\n\n").map_or(bytes.len(), |p| p + 1)
}

/// CRLF / CR → LF and no NULs (text from base64 keeps the sender's line ends).
pub(crate) fn lf_text(text: Cow<'_, str>) -> String {
    // A byte-order mark at the start is not content.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => Cow::Owned(rest.to_string()),
        None => text,
    };
    if memchr::memchr2(b'\r', b'\0', text.as_bytes()).is_none() {
        return text.into_owned();
    }
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\0', "")
}

/// Whether a draft attachment is a TNEF part (`application/ms-tnef`, or a `winmail.dat` some
/// gateway relabelled, e.g. as `application/octet-stream`).
fn is_tnef_attachment(attachment: &Attachment) -> bool {
    matches!(
        attachment.content_type.as_str(),
        "application/ms-tnef" | "application/vnd.ms-tnef"
    ) || attachment
        .filename
        .as_deref()
        .is_some_and(|n| n.eq_ignore_ascii_case("winmail.dat"))
}

/// Puts a TNEF part into `out`: each file inside becomes an attachment (with its bytes when
/// contents are collected), in place of the part; the part itself stays too in the cases the
/// module docs list. The first TNEF's body is kept for a mail without one.
fn expand_tnef_into(original: Attachment, bytes: &[u8], out: &mut Bodies) {
    let outer_has_body = !out.text_parts.is_empty() || out.html.is_some();
    let tnef = if tnef::is_tnef_data(bytes) {
        tnef::read(bytes)
    } else {
        None
    };
    let Some(tnef) = tnef else {
        push_attachment(out, original, bytes);
        return;
    };
    let keep_original = !tnef.complete
        || !tnef.is_plain_message()
        || (tnef.rtf_body_only && !outer_has_body)
        || (tnef.attachments.is_empty()
            && tnef.body_text.is_none()
            && tnef.body_html.is_none()
            && !tnef.rtf_body_only);
    for file in &tnef.attachments {
        let attachment = Attachment {
            filename: file.filename.clone(),
            content_type: file.content_type.clone(),
            size: file.data.len() as u64,
            inline: file.content_id.is_some(),
            content_id: file.content_id.clone(),
        };
        push_attachment(out, attachment, file.data);
    }
    if keep_original {
        push_attachment(out, original, bytes);
    }
    if out.tnef_body_text.is_none() && out.tnef_body_html.is_none() {
        out.tnef_body_text = tnef.body_text;
        out.tnef_body_html = tnef.body_html;
    }
}

fn push_attachment(out: &mut Bodies, attachment: Attachment, bytes: &[u8]) {
    out.attachments.push(attachment);
    if let Some(contents) = out.contents.as_mut() {
        contents.push(bytes.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flowed_text_is_joined() {
        assert_eq!(
            unflow("Hello \nworld\n> quoted \n> line\n-- \nsig\n", false),
            "Hello world\n> quoted line\n-- \nsig\n"
        );
        assert_eq!(unflow("印刷でき \nません。", true), "印刷できません。");
        assert_eq!(unflow(" From stuffed\n", false), "From stuffed\n");
    }
}
