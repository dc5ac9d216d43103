//! Repairs applied to the raw bytes before MIME parsing, so LF, CRLF and bare-CR input, mbox
//! `From ` lines, junk before the first header and broken header folding all parse the same.
//!
//! Output uses LF line ends. Only the header block is rewritten beyond line ends; the body is
//! copied (or borrowed, when nothing needs changing).

use super::codec;
use super::draft::ParseError;
use std::borrow::Cow;

/// More boundary lines than this and the message is refused: the MIME tree of that many parts
/// costs far more memory than the message (a helpdesk mail has a few dozen at most).
pub(crate) const MAX_PARTS: usize = 10_000;

/// How far into the input we look for the first header field before giving up.
const HEADER_SEARCH_LIMIT: usize = 64 * 1024;

/// The repaired message and what the header block says about undeclared charsets.
#[derive(Debug)]
pub(crate) struct Normalized<'a> {
    /// The message with LF line ends and a repaired header block.
    pub data: Cow<'a, [u8]>,
    /// Charset hint for undeclared 8-bit body text (from RFC 2047 words or raw 8-bit headers).
    pub charset_hint: Option<&'static encoding_rs::Encoding>,
}

/// LF line ends, then header-block repairs. Text without any header becomes a body-only
/// message. Errors on empty input and on binary input without headers.
pub(crate) fn normalize(raw: &[u8]) -> Result<Normalized<'_>, ParseError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    let lf = to_lf(raw);
    let (header_start, header_end) = match locate_header_block(&lf) {
        Ok(found) => found,
        Err(error) => {
            if !looks_like_text(&lf) {
                return Err(error);
            }
            // Plain text without a header: a body-only message.
            let mut out = Vec::with_capacity(lf.len() + 20);
            out.extend_from_slice(b"MIME-Version: 1.0\n\n");
            out.extend_from_slice(&lf);
            return Ok(Normalized {
                data: Cow::Owned(out),
                charset_hint: None,
            });
        }
    };
    let header = &lf[header_start..header_end];
    let mut charset_hint = codec::encoded_word_charset(header);
    let data = match repair_header_block(header) {
        None if header_start == 0 => lf,
        None => slice_cow(lf, header_start),
        Some((fixed, transcoded_from)) => {
            charset_hint = charset_hint.or(transcoded_from);
            let mut out = Vec::with_capacity(fixed.len() + lf.len() - header_end);
            out.extend_from_slice(&fixed);
            out.extend_from_slice(&lf[header_end..]);
            Cow::Owned(out)
        }
    };
    let data = match declare_lost_boundary(&data) {
        Some(fixed) => Cow::Owned(fixed),
        None => data,
    };
    // Part headers: only worth a look when some line is a bare `boundary=`-style parameter.
    let (fixed, dash_lines) = repair_part_headers(&data, 0);
    if dash_lines > MAX_PARTS {
        return Err(ParseError::TooManyParts { limit: MAX_PARTS });
    }
    let data = match fixed {
        Some(fixed) => Cow::Owned(fixed),
        None => data,
    };
    Ok(Normalized { data, charset_hint })
}

/// A body laid out as MIME parts whose top-level header lost its multipart `Content-Type`
/// (a bounce stored without it) or the type's `boundary` parameter: when the body's first
/// `--` line is a valid boundary delimiter (RFC 2046 5.1.1: 1-70 boundary characters, at least
/// one letter or digit) that a later `--<boundary>--` line closes, the message gets a
/// `Content-Type: multipart/mixed; boundary="..."` (or its own multipart type keeps its
/// parameters and gains the boundary), so the parts are parts again rather than body text.
/// `data` starts with the (repaired) header block. `None` when nothing needs declaring.
fn declare_lost_boundary(data: &[u8]) -> Option<Vec<u8>> {
    let header_end = memchr::memmem::find(data, b"\n\n")? + 1;
    let header = &data[..header_end];
    // Nearly every multipart mail names its boundary: nothing to look for then.
    if memchr::memmem::find(header, b"oundary").is_some() {
        return None;
    }
    // The top-level Content-Type field: its lines' span.
    let mut content_type: Option<(usize, usize)> = None;
    let mut pos = 0;
    while pos < header.len() {
        let end = line_end(header, pos);
        let line = &header[pos..end];
        if let Some((start, _)) = content_type.filter(|(_, e)| *e + 1 == pos) {
            if is_continuation(line) {
                content_type = Some((start, end));
            }
        } else if content_type.is_none()
            && line.len() >= 13
            && line[..13].eq_ignore_ascii_case(b"content-type:")
        {
            content_type = Some((pos, end));
        }
        pos = end + 1;
    }
    if let Some((start, end)) = content_type {
        let field = header[start..end].to_ascii_lowercase();
        let value = trim_start_ws(&field[13..]);
        if !value.starts_with(b"multipart/") || memchr::memmem::find(&field, b"boundary").is_some()
        {
            return None;
        }
    }
    let body = &data[header_end + 1..];
    let first = if body.starts_with(b"--") {
        0
    } else {
        memchr::memmem::find(body, b"\n--")? + 1
    };
    let line = &body[first..line_end(body, first)];
    let boundary = &line[2..];
    let is_bchar = |b: &u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(b);
    if boundary.is_empty()
        || boundary.len() > 70
        || boundary.ends_with(b" ")
        || !boundary.iter().all(is_bchar)
        || !boundary.iter().any(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    let mut closing = b"\n--".to_vec();
    closing.extend_from_slice(boundary);
    closing.extend_from_slice(b"--");
    memchr::memmem::find(&body[first..], &closing)?;
    let boundary = String::from_utf8_lossy(boundary).replace('"', "");
    let mut out = Vec::with_capacity(data.len() + boundary.len() + 64);
    match content_type {
        Some((_, end)) => {
            out.extend_from_slice(&data[..end]);
            out.extend_from_slice(format!(";\n boundary=\"{boundary}\"").as_bytes());
            out.extend_from_slice(&data[end..]);
        }
        None => {
            out.extend_from_slice(&data[..header_end]);
            out.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\n").as_bytes(),
            );
            out.extend_from_slice(&data[header_end..]);
        }
    }
    Some(out)
}

/// Text, not binary: no NUL and few control characters in the first 64 KiB.
fn looks_like_text(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(HEADER_SEARCH_LIMIT)];
    let controls = sample
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\t' | b'\x0c' | 0x1b))
        .count();
    !sample.contains(&0) && controls * 20 <= sample.len()
}

fn slice_cow(data: Cow<'_, [u8]>, from: usize) -> Cow<'_, [u8]> {
    match data {
        Cow::Borrowed(b) => Cow::Borrowed(&b[from..]),
        Cow::Owned(mut v) => {
            v.drain(..from);
            Cow::Owned(v)
        }
    }
}

/// CRLF and bare CR become LF. Borrows when the input has no CR at all.
pub(crate) fn to_lf(raw: &[u8]) -> Cow<'_, [u8]> {
    let Some(first_cr) = memchr::memchr(b'\r', raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut copied = 0;
    let mut cr = first_cr;
    loop {
        out.extend_from_slice(&raw[copied..cr]);
        out.push(b'\n');
        copied = if raw.get(cr + 1) == Some(&b'\n') {
            cr + 2
        } else {
            cr + 1
        };
        match memchr::memchr(b'\r', &raw[copied..]) {
            Some(next) => cr = copied + next,
            None => break,
        }
    }
    out.extend_from_slice(&raw[copied..]);
    Cow::Owned(out)
}

/// Whether a line looks like a header field: a field name of printable ASCII, then a colon.
pub(crate) fn is_header_line(line: &[u8]) -> bool {
    // The colon must come within the first 77 bytes: no need to look further into body lines.
    let Some(colon) = line.iter().take(77).position(|&b| b == b':') else {
        return false;
    };
    if colon == 0 {
        return false;
    }
    let name = trim_end_ws(&line[..colon]);
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// Whether a line is a bare MIME parameter (`name="value"`, `filename*0*=...`), i.e. the tail
/// of a Content-Type / Content-Disposition whose folding whitespace was lost.
fn is_param_line(line: &[u8]) -> bool {
    // The name (`[A-Za-z0-9_*-]+`), optional blanks, then `=`: decided within the first few
    // bytes, so header and body lines (`Received: ...`) are rejected without scanning them.
    let name_len = line
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*')))
        .unwrap_or(line.len());
    let name = &line[..name_len];
    if name.is_empty() || trim_start_ws(&line[name_len..]).first() != Some(&b'=') {
        return false;
    }
    let known = [
        &b"boundary"[..],
        b"charset",
        b"name",
        b"filename",
        b"format",
        b"delsp",
        b"type",
        b"start",
        b"report-type",
        b"protocol",
        b"micalg",
        b"method",
        b"size",
        b"creation-date",
        b"modification-date",
    ];
    let base = name.split(|&b| b == b'*').next().unwrap_or(name);
    known.iter().any(|k| base.eq_ignore_ascii_case(k))
}

/// Un-folded MIME parameters in part headers (a line `boundary="..."` without leading
/// whitespace right after a `Content-Type:` line) get their folding space back. Only the
/// header blocks that follow a boundary delimiter line (`--...`) are looked at.
/// Also counts the lines that start with `--` (an upper bound of the MIME parts).
fn repair_part_headers(data: &[u8], from: usize) -> (Option<Vec<u8>>, usize) {
    let mut inserts: Vec<usize> = Vec::new();
    let mut dash_lines = 0;
    let mut pos = from;
    // Only lines that start with `--` matter: jump from one to the next (SIMD search for
    // "\n--"); the lines in between are skipped exactly as a line-by-line walk would skip them.
    let mut dash_starts = (data[from..].starts_with(b"--").then_some(from).into_iter())
        .chain(memchr::memmem::find_iter(&data[from..], b"\n--").map(|i| from + i + 1));
    while pos < data.len() {
        let Some(next) = dash_starts.find(|&start| start >= pos) else {
            break;
        };
        pos = next;
        let end = line_end(data, pos);
        if data[pos..end].starts_with(b"--") {
            dash_lines += 1;
            // Walk this part's header block (bounded).
            let mut p = (end + 1).min(data.len());
            let mut in_header = false;
            for _ in 0..64 {
                if p >= data.len() {
                    break;
                }
                let e = line_end(data, p);
                let line = &data[p..e];
                if line.is_empty() {
                    break;
                }
                if in_header && is_param_line(line) {
                    inserts.push(p);
                } else if !is_continuation(line) && !is_header_line(line) {
                    break;
                }
                in_header = true;
                p = (e + 1).min(data.len());
            }
            pos = p.max(end + 1);
            continue;
        }
        pos = end + 1;
    }
    if inserts.is_empty() {
        return (None, dash_lines);
    }
    let mut out = Vec::with_capacity(data.len() + inserts.len());
    let mut last = 0;
    for at in inserts {
        out.extend_from_slice(&data[last..at]);
        out.push(b' ');
        last = at;
    }
    out.extend_from_slice(&data[last..]);
    (Some(out), dash_lines)
}

fn trim_end_ws(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |p| p + 1);
    &s[..end]
}

fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// Start of the first header line (after BOM, blank lines, an mbox `From ` line or other junk)
/// and the end of the header block (just past the LF of the last header line).
fn locate_header_block(data: &[u8]) -> Result<(usize, usize), ParseError> {
    let mut pos = 0;
    if data.starts_with(b"\xEF\xBB\xBF") {
        pos = 3;
    }
    let limit = data.len().min(HEADER_SEARCH_LIMIT);
    let start = loop {
        if pos >= limit {
            return Err(ParseError::NoHeaders { scanned: limit });
        }
        let end = line_end(data, pos);
        let line = &data[pos..end];
        let mbox_from = line.starts_with(b"From ") || line.starts_with(b">From ");
        if !mbox_from && is_header_line(line) {
            break pos;
        }
        // An indented header right after an mbox From line (broken folding): take it.
        if is_continuation(line) && pos > 0 && is_header_line(trim_start_ws(line)) {
            break pos;
        }
        pos = (end + 1).min(data.len());
    };
    // End of the header block: the first empty line.
    let mut pos = start;
    while pos < data.len() {
        let end = line_end(data, pos);
        if end == pos {
            return Ok((start, pos));
        }
        pos = end + 1;
    }
    Ok((start, data.len()))
}

fn trim_start_ws(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    &s[start..]
}

/// `data.split(|&b| b == b'\n')`, with a SIMD search for each line end instead of a byte
/// loop (header blocks of bounces and list mail run to tens of kilobytes).
fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(end) => {
                rest = Some(&current[end + 1..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn line_end(data: &[u8], from: usize) -> usize {
    memchr::memchr(b'\n', &data[from..]).map_or(data.len(), |p| from + p)
}

/// Repairs the header block; `None` when it needs nothing. Repairs:
/// - indented lines before the first real header (folding broken after an mbox `From ` line)
///   are un-indented;
/// - a line that is neither a header nor a continuation becomes a continuation when a header
///   follows it (broken folding), else it starts the body (missing blank line);
/// - raw 8-bit bytes that are not UTF-8 are transcoded to UTF-8 from the sniffed charset.
///
/// Returns the repaired block and, when raw 8-bit was transcoded, the charset it came from.
fn repair_header_block(header: &[u8]) -> Option<(Vec<u8>, Option<&'static encoding_rs::Encoding>)> {
    if header_block_is_clean(header) {
        return None;
    }
    let lines: Vec<&[u8]> = split_lines(header).filter(|l| !l.is_empty()).collect();
    let mut out: Vec<u8> = Vec::with_capacity(header.len() + 16);
    let mut changed = false;
    let mut seen_header = false;
    let mut last_field: &[u8] = b"";
    let mut seen_fields: Vec<&[u8]> = Vec::new();
    // Set while inside a run of stray lines already known to be followed by a header (so
    // a long wrapped token is looked ahead over once, not once per line).
    let mut known_header_follows = false;
    for (i, line) in lines.iter().enumerate() {
        if seen_header && is_param_line(line) {
            // A MIME parameter (`boundary="..."`) that lost its folding whitespace.
            out.push(b' ');
            out.extend_from_slice(line);
            changed = true;
        } else if !is_continuation(line) && is_header_line(line) {
            seen_header = true;
            known_header_follows = false;
            last_field = field_name(line);
            seen_fields.push(last_field);
            match numeric_date_zone(line) {
                Some(fixed) => {
                    out.extend_from_slice(&fixed);
                    changed = true;
                }
                None => out.extend_from_slice(line),
            }
        } else if is_continuation(line) {
            if seen_header {
                out.extend_from_slice(line);
            } else {
                out.extend_from_slice(trim_start_ws(line));
                changed = true;
                seen_header = true;
            }
        } else {
            changed = true;
            if is_mbox_from_line(line) {
                continue;
            }
            known_header_follows =
                known_header_follows || header_follows_junk(line, &lines[i + 1..], &seen_fields);
            if known_header_follows {
                // A line of a value wrapped without folding whitespace (a long base64 token,
                // a wrapped subject) or a stray line: the header block goes on after it.
                if junk_continues(last_field, line) {
                    out.push(b' ');
                    out.extend_from_slice(line);
                } else {
                    continue;
                }
            } else {
                // The blank line between header and body is missing: start the body here.
                out.push(b'\n');
                for rest in &lines[i..] {
                    out.extend_from_slice(rest);
                    out.push(b'\n');
                }
                out.pop();
                out.push(b'\n');
                return finish_header_block(out, true);
            }
        }
        out.push(b'\n');
    }
    finish_header_block(out, changed)
}

/// The last repairs of a header block: raw 8-bit inside RFC 2047 Q words escaped, then other
/// raw 8-bit transcoded. `None` when neither these nor the line repairs (`changed`) did
/// anything.
fn finish_header_block(
    out: Vec<u8>,
    changed: bool,
) -> Option<(Vec<u8>, Option<&'static encoding_rs::Encoding>)> {
    let (out, escaped) = match codec::escape_8bit_in_q_words(&out) {
        Some(escaped) => (escaped, true),
        None => (out, false),
    };
    match transcode_8bit(out) {
        Ok((fixed, enc)) => Some((fixed, Some(enc))),
        Err(unchanged) if changed || escaped => Some((unchanged, None)),
        Err(_) => None,
    }
}

/// The field name of a header line (`Subject` of `Subject: x`), trimmed.
fn field_name(line: &[u8]) -> &[u8] {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    trim_end_ws(&line[..colon])
}

/// Whether the header block goes on after a line that is neither a header nor a
/// continuation (`line`, followed by `rest`), as mail clients keep reading it:
/// - the next line that is not a continuation is a header line (one stray line, or a value
///   wrapped onto one more line without folding);
/// - past more lines of one wrapped token (a long base64 value or URL wrapped without folding:
///   lines without blanks), the next header line, whatever it is;
/// - past other stray lines, a header line of a standard field the block has not had yet
///   (`seen`) within [`MAX_LOOKAHEAD`] lines: a header block goes on to its From, Subject or
///   Date, while a body whose blank line is missing and which quotes a header block (`From:`
///   again) does not.
///
/// Otherwise the blank line before the body is missing and the body starts at `line`.
fn header_follows_junk(line: &[u8], rest: &[&[u8]], seen: &[&[u8]]) -> bool {
    let is_token = |l: &[u8]| !l.is_empty() && !l.iter().any(|b| matches!(b, b' ' | b'\t'));
    let mut all_tokens = is_token(line);
    let mut strays = 0;
    let mut looked = 0;
    for next in rest
        .iter()
        .filter(|l| !is_continuation(l) && !is_mbox_from_line(l))
    {
        looked += 1;
        if is_header_line(next) {
            if strays == 0 || all_tokens {
                return true;
            }
            let name = field_name(next);
            if is_once_only_field(name) && !seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                return true;
            }
        } else {
            strays += 1;
            all_tokens = all_tokens && is_token(next);
        }
        if looked > MAX_LOOKAHEAD && !all_tokens {
            return false;
        }
    }
    false
}

/// How many lines past a stray line (other than a wrapped token) are searched for a standard
/// field the header block has not had yet.
const MAX_LOOKAHEAD: usize = 64;

/// The fields RFC 5322 3.6 and RFC 2045 allow once per header block.
fn is_once_only_field(name: &[u8]) -> bool {
    [
        &b"from"[..],
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"in-reply-to",
        b"references",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

/// An mbox `From ` line (or its `>From ` quoted form) inside the header block: mutt skips
/// them there too (MH and some MTAs leave one in the middle of the header).
fn is_mbox_from_line(line: &[u8]) -> bool {
    line.starts_with(b"From ") || line.starts_with(b">From ")
}

/// Whether a stray line inside the header block continues the field before it (a value
/// wrapped without folding whitespace) or is dropped: a line without `@` cannot continue an
/// address field, a line without `<`, `@` or a digit no Message-ID list or date.
fn junk_continues(field: &[u8], line: &[u8]) -> bool {
    let is = |names: &[&[u8]]| names.iter().any(|n| field.eq_ignore_ascii_case(n));
    if is(&[
        b"from",
        b"to",
        b"cc",
        b"bcc",
        b"reply-to",
        b"sender",
        b"return-path",
    ]) {
        return line.contains(&b'@');
    }
    if is(&[b"message-id", b"in-reply-to", b"references"]) {
        return line.contains(&b'@') || line.contains(&b'<');
    }
    if is(&[b"date"]) {
        return line.iter().any(u8::is_ascii_digit);
    }
    true
}

/// A `Date:` line whose zone is `UT` or a one-letter military zone, with the zone rewritten to
/// `+0000` (RFC 5322 4.3: both mean UTC). mail-parser's date parser reads past such a zone and
/// swallows the next header field (the Message-ID was lost after `Date: ... 9:05:00 UT`).
fn numeric_date_zone(line: &[u8]) -> Option<Vec<u8>> {
    if line.len() < 5 || !line[..5].eq_ignore_ascii_case(b"date:") {
        return None;
    }
    let value = trim_end_ws(line);
    let zone_start = value.iter().rposition(|b| b.is_ascii_whitespace())? + 1;
    let zone = &value[zone_start..];
    let obsolete =
        zone.eq_ignore_ascii_case(b"UT") || (zone.len() == 1 && zone[0].is_ascii_alphabetic());
    if !obsolete || zone_start <= 5 {
        return None;
    }
    let mut fixed = value[..zone_start].to_vec();
    fixed.extend_from_slice(b"+0000");
    Some(fixed)
}

/// Whether [`repair_header_block`] would leave the block as it is: the same decisions, without
/// building the copy (most mail needs no repair).
fn header_block_is_clean(header: &[u8]) -> bool {
    let mut seen_header = false;
    for line in split_lines(header).filter(|l| !l.is_empty()) {
        if seen_header && is_param_line(line) {
            return false;
        }
        if !is_continuation(line) && is_header_line(line) {
            seen_header = true;
            if numeric_date_zone(line).is_some() {
                return false;
            }
        } else if !is_continuation(line) || !seen_header {
            return false;
        }
    }
    std::str::from_utf8(header).is_ok()
}

/// `Ok((transcoded, charset))` when the block had 8-bit bytes that are not UTF-8, else
/// `Err(input)`. The charset is sniffed from the 8-bit bytes alone.
fn transcode_8bit(block: Vec<u8>) -> Result<(Vec<u8>, &'static encoding_rs::Encoding), Vec<u8>> {
    if block.is_ascii() || std::str::from_utf8(&block).is_ok() {
        return Err(block);
    }
    // Guess from the lines that are not UTF-8; transcode only those lines.
    let foreign: Vec<u8> = block
        .split(|&b| b == b'\n')
        .filter(|l| std::str::from_utf8(l).is_err())
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    let enc = codec::guess(&foreign);
    let mut out = Vec::with_capacity(block.len() + block.len() / 2);
    for (i, line) in block.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if std::str::from_utf8(line).is_ok() {
            out.extend_from_slice(line);
        } else {
            let (text, _) = enc.decode_without_bom_handling(line);
            out.extend_from_slice(text.as_bytes());
        }
    }
    Ok((out, enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definitions the fast line checks must agree with: the first `:` (`=`) of the line,
    /// and what comes before it.
    fn header_line_by_definition(line: &[u8]) -> bool {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = trim_end_ws(&line[..colon]);
        colon > 0
            && colon <= 76
            && !name.is_empty()
            && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
    }

    fn param_line_by_definition(line: &[u8]) -> bool {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return false;
        };
        let name = trim_end_ws(&line[..eq]);
        let base = name.split(|&b| b == b'*').next().unwrap_or(name);
        !name.is_empty()
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
            && [
                "boundary", "charset", "name", "filename", "format", "delsp", "type", "start",
            ]
            .iter()
            .chain(&["report-type", "protocol", "micalg", "method", "size"])
            .chain(&["creation-date", "modification-date"])
            .any(|k| base.eq_ignore_ascii_case(k.as_bytes()))
    }

    proptest! {
        #[test]
        fn line_checks_agree_with_their_definitions(
            line in "[ \t]{0,2}(boundary|Name|filename\\*0\\*|x-y|Received|[a-z]{0,80})[ \t]{0,2}[:=]?[ \t]{0,2}[=:]?[ -~]{0,100}"
        ) {
            let line = line.as_bytes();
            prop_assert_eq!(is_header_line(line), header_line_by_definition(line));
            prop_assert_eq!(is_param_line(line), param_line_by_definition(line));
        }
    }

    #[test]
    fn split_lines_is_split_at_lf() {
        for data in ["", "\n", "a", "a\n", "a\nb", "\n\na\n\nb\n", "a\r\nb"] {
            let expected: Vec<&[u8]> = data.as_bytes().split(|&b| b == b'\n').collect();
            assert_eq!(
                split_lines(data.as_bytes()).collect::<Vec<_>>(),
                expected,
                "{data:?}"
            );
        }
    }

    #[test]
    fn line_checks_agree_on_crafted_lines() {
        let long_name = format!("{}: x", "a".repeat(76));
        let too_long = format!("{}: x", "a".repeat(77));
        for line in [
            "boundary=\"x\"",
            "boundary =x",
            "\tboundary=x",
            "filename*0*=utf-8''a",
            "Boundary\t= x",
            "bound ary=x",
            "name:=x",
            "x-boundary=y",
            "Subject: a=b",
            "Subject : x",
            ": x",
            "=",
            "",
            long_name.as_str(),
            too_long.as_str(),
        ] {
            assert_eq!(
                is_header_line(line.as_bytes()),
                header_line_by_definition(line.as_bytes()),
                "{line:?}"
            );
            assert_eq!(
                is_param_line(line.as_bytes()),
                param_line_by_definition(line.as_bytes()),
                "{line:?}"
            );
        }
    }

    fn norm(s: &[u8]) -> String {
        String::from_utf8(normalize(s).unwrap().data.into_owned()).unwrap()
    }

    #[test]
    fn crlf_and_bare_cr_become_lf() {
        assert_eq!(
            norm(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            "A: 1\nB: 2\n\nbody\n"
        );
        assert_eq!(norm(b"A: 1\rB: 2\r\rbody\r"), "A: 1\nB: 2\n\nbody\n");
    }

    #[test]
    fn mbox_from_line_and_junk_are_skipped() {
        assert_eq!(
            norm(b"From someone@example.com Mon Jan  1 00:00:00 2024\nSubject: x\n\nhi"),
            "Subject: x\n\nhi"
        );
        assert_eq!(
            norm(b"\n\n  garbage line\nSubject: x\n\nhi"),
            "Subject: x\n\nhi"
        );
    }

    #[test]
    fn obsolete_date_zones_become_numeric() {
        assert_eq!(
            numeric_date_zone(b"Date: Mon, 8 Apr 2024 9:05:00 UT").as_deref(),
            Some(&b"Date: Mon, 8 Apr 2024 9:05:00 +0000"[..])
        );
        assert_eq!(
            numeric_date_zone(b"Date: Mon, 8 Apr 2024 09:05:00 Z").as_deref(),
            Some(&b"Date: Mon, 8 Apr 2024 09:05:00 +0000"[..])
        );
        assert_eq!(
            numeric_date_zone(b"Date: Mon, 8 Apr 2024 09:05:00 GMT"),
            None
        );
        assert_eq!(numeric_date_zone(b"Subject: A"), None);
    }

    #[test]
    fn broken_folding_is_repaired() {
        assert_eq!(
            norm(b"Subject: a very long\nsubject line\nFrom: a@b.c\n\nhi"),
            "Subject: a very long\n subject line\nFrom: a@b.c\n\nhi"
        );
        assert_eq!(
            norm(b"From x Mon Jan  1 00:00:00 2024\n Subject: x\nFrom: a@b.c\n\nhi"),
            "Subject: x\nFrom: a@b.c\n\nhi"
        );
    }

    #[test]
    fn headers_are_read_past_a_token_wrapped_without_folding() {
        let wrapped = b"From someone@example.com Mon Jan  1 00:00:00 2024\n\
            X-Tracking: QUFBQUFBQUFB\nQkJCQkJCQkJC\nQ0NDQ0M=\nSubject: Printer\nTo: a@b.example\n\nhi";
        assert_eq!(
            norm(wrapped),
            "X-Tracking: QUFBQUFBQUFB\n QkJCQkJCQkJC\n Q0NDQ0M=\nSubject: Printer\nTo: a@b.example\n\nhi"
        );
        // A stray line, an mbox `From ` line in the middle and a line that cannot continue an
        // address field: the headers after them are kept.
        assert_eq!(
            norm(b"Subject: x\nTo: a@b.example\nstray words\nFrom x@y Mon Jan  1 00:00:00 2024\nFrom: c@d.example\n\nhi"),
            "Subject: x\nTo: a@b.example\nFrom: c@d.example\n\nhi"
        );
        // Text lines without a header after them are the body (the blank line is missing),
        // even when a quoted header block follows further down.
        let quoting = "From: a@b.example\nSubject: x\nHi, see below.\n-----Original Message-----\nFrom: Bob\nSent: Monday\n\nold";
        assert_eq!(
            norm(quoting.as_bytes()),
            quoting.replace("x\nHi", "x\n\nHi")
        );
        // A value wrapped over several lines with blanks (an unfolded spam report): the
        // header block goes on to the From and Subject it has not had yet.
        assert_eq!(
            norm(
                b"X-Report: score 5.1\nrule A 1.0\nrule B 4.1\nFrom: a@b.example\nSubject: x\n\nhi"
            ),
            "X-Report: score 5.1\n rule A 1.0\n rule B 4.1\nFrom: a@b.example\nSubject: x\n\nhi"
        );
    }

    #[test]
    fn a_lost_multipart_boundary_is_declared_again() {
        let parts = "\n\npreamble\n--b.1/x\nContent-Type: text/plain\n\nhi\n--b.1/x--\n";
        assert_eq!(
            norm(format!("Subject: x{parts}").as_bytes()),
            format!("Subject: x\nContent-Type: multipart/mixed; boundary=\"b.1/x\"{parts}")
        );
        assert_eq!(
            norm(
                format!("Content-Type: multipart/report;\n report-type=delivery-status{parts}")
                    .as_bytes()
            ),
            format!(
                "Content-Type: multipart/report;\n report-type=delivery-status;\n boundary=\"b.1/x\"{parts}"
            )
        );
        // Text with dash lines that no closing delimiter matches stays text; so does a
        // declared type.
        for text in [
            "Subject: x\n\nhi\n-----Original Message-----\nFrom: a\n",
            "Subject: x\n\nhi\n-- \nsig\n",
            "Subject: x\n\n--a\n--a--\n--b\n",
            "Content-Type: text/plain\n\n--a\nx\n--a--\n",
            "Content-Type: multipart/mixed; boundary=z\n\n--a\nx\n--a--\n",
        ] {
            let expected = if text.contains("--a--\n--b") {
                text.replace(
                    "x\n\n",
                    "x\nContent-Type: multipart/mixed; boundary=\"a\"\n\n",
                )
            } else {
                text.to_string()
            };
            assert_eq!(norm(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn missing_blank_line_starts_the_body() {
        assert_eq!(
            norm(b"Subject: x\nhello there\n"),
            "Subject: x\n\nhello there\n"
        );
    }

    #[test]
    fn empty_and_headerless_input_are_errors() {
        assert_eq!(normalize(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(normalize(b" \r\n ").unwrap_err(), ParseError::Empty);
        assert!(matches!(
            normalize(b"\x00\x01binary\x02\x03\x04 junk"),
            Err(ParseError::NoHeaders { .. })
        ));
        assert_eq!(
            norm(b"just some text\nwithout any header\n"),
            "MIME-Version: 1.0\n\njust some text\nwithout any header\n"
        );
    }
}
