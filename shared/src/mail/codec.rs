//! The decoders every stage of the parse shares, so that none of them reaches back into
//! another: charset repairs for text the MIME parser could not decode cleanly (undeclared 8-bit
//! text, wrong labels, ISO-2022-JP with vendor extensions and Shift_JIS sent as ISO-2022-JP),
//! RFC 2047 encoded words (B and Q), lenient base64, RFC 2231 percent-encoding, and header
//! values (unfolding, angle brackets).

use base64::Engine as _;
use encoding_rs::{
    EUC_JP, Encoding, ISO_2022_JP, ISO_8859_2, ISO_8859_7, ISO_8859_8, ISO_8859_8_I, ISO_8859_13,
    SHIFT_JIS, UTF_8, WINDOWS_1250, WINDOWS_1253, WINDOWS_1255, WINDOWS_1257,
};
use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The charset chardetng guesses for 8-bit bytes.
pub(crate) fn guess(bytes: &[u8]) -> &'static Encoding {
    let mut detector = chardetng::EncodingDetector::new();
    detector.feed(bytes, true);
    detector.guess(None, true)
}

/// A hint for undeclared 8-bit body text: the charset of the first RFC 2047 encoded word in
/// the header block that is not UTF-8/ASCII (the sender's client used it for the header, so
/// likely for the body too).
pub(crate) fn encoded_word_charset(header: &[u8]) -> Option<&'static Encoding> {
    memchr::memmem::find_iter(header, b"=?").find_map(|at| {
        let label = encoded_word_label(&header[at + 2..])?;
        if label.eq_ignore_ascii_case(b"us-ascii") || label.eq_ignore_ascii_case(b"ascii") {
            return None;
        }
        let enc = Encoding::for_label(label)?;
        (enc != UTF_8).then_some(enc)
    })
}

/// The charset label of an RFC 2047 encoded word whose `=?` ends just before `rest`: the
/// label (`[A-Za-z0-9_.:-]{1,40}`), an optional RFC 2231 language (`*[A-Za-z-]*`), then
/// `?B?` or `?Q?`. `None` when `rest` does not continue an encoded word that way.
fn encoded_word_label(rest: &[u8]) -> Option<&[u8]> {
    let is_label_byte =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    let label_len = rest.iter().take_while(|b| is_label_byte(b)).count();
    if !(1..=40).contains(&label_len) {
        return None;
    }
    let mut tail = &rest[label_len..];
    if let Some(language) = tail.strip_prefix(b"*") {
        let skip = language
            .iter()
            .take_while(|b| b.is_ascii_alphabetic() || **b == b'-')
            .count();
        tail = &language[skip..];
    }
    match tail {
        [b'?', b'b' | b'B' | b'q' | b'Q', b'?', ..] => Some(&rest[..label_len]),
        _ => None,
    }
}

/// Decodes raw ISO-2022-JP runs (`ESC $ B ... ESC ( B`) left inside otherwise decoded text,
/// e.g. RFC 2231 continuations that repeat no charset, or undeclared JIS mail.
pub(crate) fn fix_embedded_iso_2022_jp(text: &str) -> Cow<'_, str> {
    static RUN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\x1b[\$\(][@A-Z(][^\x1b]*(\x1b[\$\(][@A-Z(][^\x1b]*)*").expect("static regex")
    });
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    RUN.replace_all(text, |c: &regex::Captures<'_>| {
        let mut run = c[0].as_bytes().to_vec();
        run.extend_from_slice(b"\x1b(B");
        decode_iso_2022_jp(&run)
    })
}

/// Decodes `bytes` to text: as UTF-8 when valid, else with the declared charset when it decodes
/// without errors, else with the charset `chardetng` sniffs (Firefox's detector).
pub(crate) fn sniff_decode<'a>(
    bytes: &'a [u8],
    declared: Option<&str>,
    hint: Option<&'static Encoding>,
) -> Cow<'a, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if s.contains("\x1b$") {
            return Cow::Owned(fix_embedded_iso_2022_jp(s).into_owned());
        }
        return Cow::Borrowed(s);
    }
    let declared = declared.and_then(|label| Encoding::for_label(label.trim().as_bytes()));
    if let Some(enc) = declared
        && enc != UTF_8
    {
        let (text, had_errors) = enc.decode_without_bom_handling(bytes);
        if !had_errors {
            // C1 controls from an ISO-8859-N label: the text is the Windows sibling
            // (WHATWG already reads ISO-8859-1 as Windows-1252; not -2/-7/-8/-13).
            if has_c1_controls(&text)
                && let Some(windows) = windows_sibling(enc)
            {
                let (text, had_errors) = windows.decode_without_bom_handling(bytes);
                if !had_errors {
                    return Cow::Owned(text.into_owned());
                }
            }
            return Cow::Owned(text.into_owned());
        }
        if enc == ISO_2022_JP {
            // Japanese mail labelled ISO-2022-JP that carries EUC-JP or Shift_JIS / CP932 bytes
            // (EUC-JP first: Shift_JIS lead bytes 0x81-0x9F are invalid in EUC-JP, while
            // EUC-JP pairs often decode as Shift_JIS half-width kana and private-use characters).
            for fallback in [EUC_JP, SHIFT_JIS] {
                let (text, had_errors) = fallback.decode_without_bom_handling(bytes);
                if !had_errors {
                    return Cow::Owned(text.into_owned());
                }
            }
        }
    }
    if let Some(enc) = hint
        && declared.is_none()
    {
        let (text, had_errors) = enc.decode_without_bom_handling(bytes);
        if !had_errors {
            return Cow::Owned(text.into_owned());
        }
    }
    let (text, _, _) = guess(bytes).decode(bytes);
    Cow::Owned(text.into_owned())
}

/// RFC 2047 decoding of a raw header value, for what mail-parser gets wrong: adjacent words of
/// one charset are joined as bytes before decoding (a UTF-8 or ISO-2022-JP character split over
/// two words), base64 words without their `=` padding keep every byte, and text right after a
/// word (`=?...?=. Mail failure`) gets no inserted blank. Whitespace between two words is
/// dropped (RFC 2047 6.2), other text is kept as written. `None` when there is no encoded-word.
pub(crate) fn decode_encoded_words(raw: &str) -> Option<String> {
    static WORD: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=").expect("static regex")
    });
    if !raw.contains("=?") {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut last = 0;
    let mut found = false;
    for c in WORD.captures_iter(raw) {
        let whole = c.get(0).expect("match");
        let between = &raw[last..whole.start()];
        let label = c[1].split('*').next().unwrap_or("").to_string();
        let is_b = c[2].eq_ignore_ascii_case("b");
        if !is_b && !c[3].is_ascii() {
            // Characters left raw inside a Q word: `normalize` escaped every raw byte that
            // was not UTF-8, so these are characters already (a gateway re-encoded the header
            // as UTF-8). They are kept as they are; only the escapes decode in the charset.
            if let Some((l, buf)) = pending.take() {
                out.push_str(&decode_word_bytes(&l, &buf));
            }
            if !(found && between.trim().is_empty()) {
                out.push_str(between);
            }
            out.push_str(&decode_q_with_raw_characters(&label, &c[3]));
            found = true;
            last = whole.end();
            continue;
        }
        let bytes = if is_b {
            lenient_base64(c[3].as_bytes())
        } else {
            q_decode(c[3].as_bytes())
        };
        let joins = pending
            .as_ref()
            .is_some_and(|(l, _)| l.eq_ignore_ascii_case(&label))
            && between.trim().is_empty();
        if joins {
            if let Some((_, buf)) = pending.as_mut() {
                buf.extend_from_slice(&bytes);
            }
        } else {
            if let Some((l, buf)) = pending.take() {
                out.push_str(&decode_word_bytes(&l, &buf));
            }
            if !(found && between.trim().is_empty()) {
                out.push_str(between);
            }
            pending = Some((label, bytes));
        }
        found = true;
        last = whole.end();
    }
    if let Some((l, buf)) = pending.take() {
        out.push_str(&decode_word_bytes(&l, &buf));
    }
    out.push_str(&raw[last..]);
    found.then_some(out)
}

/// A Q word's text with raw non-ASCII characters: runs of ASCII decode in the word's
/// charset, the characters stay.
fn decode_q_with_raw_characters(label: &str, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let ascii_len = rest.find(|c: char| !c.is_ascii()).unwrap_or(rest.len());
        if ascii_len > 0 {
            out.push_str(&decode_word_bytes(
                label,
                &q_decode(&rest.as_bytes()[..ascii_len]),
            ));
        }
        let raw_len = rest[ascii_len..]
            .find(|c: char| c.is_ascii())
            .unwrap_or(rest.len() - ascii_len);
        out.push_str(&rest[ascii_len..ascii_len + raw_len]);
        rest = &rest[ascii_len + raw_len..];
    }
    out
}

/// Raw 8-bit bytes inside the text of RFC 2047 Q words (`=?iso-8859-1?Q?Fr\xF6sche?=`, where
/// `=F6` belongs) become `=XX` escapes, so the word decodes once, in its own charset, instead
/// of being transcoded with the header's sniffed charset first. Words whose text is valid
/// UTF-8 are left alone (a gateway re-encoded the header; see `decode_encoded_words`). In a
/// multi-byte charset (Shift_JIS, Big5, GBK) the ASCII byte after a raw lead byte is part of
/// the character and is escaped too (`_` would otherwise become a space). `None` when there
/// is nothing to escape.
pub(crate) fn escape_8bit_in_q_words(block: &[u8]) -> Option<Vec<u8>> {
    static Q_WORD: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
        regex::bytes::Regex::new(r"(?-u)=\?([A-Za-z0-9_.:*-]{1,60})\?[qQ]\?([^?\x00-\x20]*)\?=")
            .expect("static regex")
    });
    if block.is_ascii() || memchr::memmem::find(block, b"=?").is_none() {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for c in Q_WORD.captures_iter(block) {
        let text = c.get(2).expect("group 2");
        let bytes = text.as_bytes();
        if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
            continue;
        }
        let label = c[1].split(|&b| b == b'*').next().unwrap_or_default();
        let multi_byte =
            Encoding::for_label(label).is_some_and(|enc| !enc.is_single_byte() && enc != UTF_8);
        let buf = out.get_or_insert_with(|| Vec::with_capacity(block.len() + 32));
        buf.extend_from_slice(&block[copied..text.start()]);
        let mut trail = false;
        for &b in bytes {
            if b >= 0x80 || trail {
                buf.extend_from_slice(format!("={b:02X}").as_bytes());
                trail = multi_byte && b >= 0x80 && !trail;
            } else {
                buf.push(b);
            }
        }
        copied = text.end();
    }
    let mut buf = out?;
    buf.extend_from_slice(&block[copied..]);
    Some(buf)
}

fn q_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < text.len()
                && text[i + 1].is_ascii_hexdigit()
                && text[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn decode_word_bytes(label: &str, bytes: &[u8]) -> String {
    if is_iso_2022_jp_label(label) {
        return decode_iso_2022_jp(bytes);
    }
    match Encoding::for_label(label.trim().as_bytes()) {
        None => {
            // Charsets outside the WHATWG set that mail-parser still decodes: UTF-7 above
            // all (old Outlook wrote `=?utf-7?Q?Fr+APY-sche?=`).
            match mail_parser::decoders::charsets::map::charset_decoder(label.trim().as_bytes()) {
                Some(decode) => decode(bytes),
                None => sniff_decode(bytes, None, None).into_owned(),
            }
        }
        Some(enc) if enc != UTF_8 => {
            let (text, had_errors) = enc.decode_without_bom_handling(bytes);
            if had_errors && std::str::from_utf8(bytes).is_ok() {
                return String::from_utf8_lossy(bytes).into_owned();
            }
            text.into_owned()
        }
        _ => sniff_decode(bytes, None, None).into_owned(),
    }
}

/// Whether `label` names ISO-2022-JP or one of its vendor variants (CP50220/50221/50222).
pub(crate) fn is_iso_2022_jp_label(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase();
    l.starts_with("iso-2022-jp")
        || l.starts_with("iso2022jp")
        || matches!(
            l.as_str(),
            "csiso2022jp" | "cp50220" | "cp50221" | "cp50222" | "jis"
        )
}

/// ISO-2022-JP with the vendor extensions real mailers send: JIS X 0213 designations
/// (`ESC $ ( O/Q/P`, read as JIS X 0208, which plane 1 extends), SO/SI half-width katakana
/// (CP50221) and NEC/IBM rows (in the WHATWG JIS X 0208 index). Falls back to EUC-JP, then
/// Shift_JIS / CP932, when the bytes are 8-bit (mislabelled: ISO-2022-JP is 7-bit).
pub(crate) fn decode_iso_2022_jp(bytes: &[u8]) -> String {
    if !bytes.is_ascii() {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_string();
        }
        for fallback in [EUC_JP, SHIFT_JIS] {
            let (text, had_errors) = fallback.decode_without_bom_handling(bytes);
            if !had_errors {
                return text.into_owned();
            }
        }
    }
    // Rewrite vendor designations to ones the WHATWG decoder knows, and drop an escape
    // sequence that is directly followed by another (WHATWG reports that as an error).
    // Only ESC, SO and SI can start an escape: copy the runs between them whole.
    let mut fixed = Vec::with_capacity(bytes.len() + 16);
    let mut copied = 0;
    for i in memchr::memchr3_iter(0x1B, 0x0E, 0x0F, bytes) {
        if i < copied {
            continue; // inside an escape sequence already handled
        }
        let Some((len, replacement)) = escape_at(bytes, i) else {
            continue;
        };
        fixed.extend_from_slice(&bytes[copied..i]);
        if escape_at(bytes, i + len).is_none() {
            fixed.extend_from_slice(replacement);
        }
        copied = i + len;
    }
    fixed.extend_from_slice(&bytes[copied..]);
    let (text, _) = ISO_2022_JP.decode_without_bom_handling(&fixed);
    text.into_owned()
}

/// The escape sequence (or SO/SI shift) at `i`: its length and what the WHATWG decoder should
/// see instead.
fn escape_at(bytes: &[u8], i: usize) -> Option<(usize, &'static [u8])> {
    match bytes.get(i)? {
        0x0E => Some((1, b"\x1b(I")),
        0x0F => Some((1, b"\x1b(B")),
        0x1B => match (bytes.get(i + 1), bytes.get(i + 2), bytes.get(i + 3)) {
            (Some(b'$'), Some(b'('), Some(b'O' | b'Q' | b'P')) => Some((4, b"\x1b$B")),
            (Some(b'$'), Some(b'('), Some(b'B')) => Some((4, b"\x1b$B")),
            (Some(b'$'), Some(b'@'), _) => Some((3, b"\x1b$@")),
            (Some(b'$'), Some(b'B'), _) => Some((3, b"\x1b$B")),
            (Some(b'('), Some(b'B'), _) => Some((3, b"\x1b(B")),
            (Some(b'('), Some(b'J'), _) => Some((3, b"\x1b(J")),
            (Some(b'('), Some(b'I'), _) => Some((3, b"\x1b(I")),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `text` holds C1 control characters (U+0080..U+009F): never meant in mail text, they
/// are what Windows punctuation (quotes, dashes, euro) becomes under an ISO-8859 label.
pub(crate) fn has_c1_controls(text: &str) -> bool {
    text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c))
}

/// The Windows code page that extends an ISO-8859 charset into 0x80..0x9F.
fn windows_sibling(enc: &'static Encoding) -> Option<&'static Encoding> {
    if enc == ISO_8859_2 {
        Some(WINDOWS_1250)
    } else if enc == ISO_8859_7 {
        Some(WINDOWS_1253)
    } else if enc == ISO_8859_8 || enc == ISO_8859_8_I {
        Some(WINDOWS_1255)
    } else if enc == ISO_8859_13 {
        Some(WINDOWS_1257)
    } else {
        None
    }
}

/// Whether text decoded by the MIME parser needs a second look: it holds U+FFFD replacement
/// characters that the raw bytes did not.
pub(crate) fn looks_misdecoded(decoded: &str) -> bool {
    decoded.contains('\u{FFFD}')
}

pub(crate) fn percent_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(text, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

pub(crate) fn strip_angles(s: &str) -> &str {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
}

/// The symbols of the standard base64 alphabet (`A-Z a-z 0-9 + /`; not `=`), as a table: the
/// base64 scans below run over every attachment's bytes.
const BASE64_SYMBOL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
        i += 1;
    }
    table
};

/// A base64 body up to its first `=` (padding, or junk after it: ignored).
fn base64_head(body: &[u8]) -> &[u8] {
    &body[..memchr::memchr(b'=', body).unwrap_or(body.len())]
}

/// Whether base64 `body` ends on a whole quantum: its symbols up to the first `=` are a multiple
/// of 4 (or one dangling character, which decodes to nothing), or the `=` padding is there.
pub(crate) fn base64_complete(body: &[u8]) -> bool {
    let head = base64_head(body);
    let significant: usize = head
        .iter()
        .map(|&b| usize::from(BASE64_SYMBOL[usize::from(b)]))
        .sum();
    significant.is_multiple_of(4) || significant % 4 == 1 || head.len() < body.len()
}

/// Base64 that tolerates junk characters, missing padding and a dangling last character.
pub(crate) fn lenient_base64(input: &[u8]) -> Vec<u8> {
    let head = base64_head(input);
    // Sized once: collecting a 27 MB body by doubling would reserve 32 MB.
    let mut clean = Vec::with_capacity(head.len());
    clean.extend(
        head.iter()
            .copied()
            .filter(|&b| BASE64_SYMBOL[usize::from(b)]),
    );
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&clean).unwrap_or_default()
}

/// A header value on one line: line breaks and tabs as spaces, runs of spaces collapsed, trimmed
/// (display names, subjects).
pub(crate) fn unfold(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let mut out = String::with_capacity(s.len());
    let mut last_space = false;
    for c in s.trim().chars() {
        if c == ' ' {
            if !last_space {
                out.push(c);
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

/// A field value with folding line breaks replaced by single spaces, trimmed: the pieces between
/// `\r`/`\n` characters, trimmed, the empty ones dropped, joined by one space.
pub(crate) fn unfold_value(v: &str) -> Cow<'_, str> {
    let bytes = v.as_bytes();
    if memchr::memchr2(b'\r', b'\n', bytes).is_none() {
        return Cow::Borrowed(v.trim());
    }
    let mut unfolded = String::with_capacity(v.len());
    let mut push_piece = |piece: &str| {
        let piece = piece.trim();
        if !piece.is_empty() {
            if !unfolded.is_empty() {
                unfolded.push(' ');
            }
            unfolded.push_str(piece);
        }
    };
    let mut piece_start = 0;
    for line_break in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        push_piece(&v[piece_start..line_break]);
        piece_start = line_break + 1;
    }
    push_piece(&v[piece_start..]);
    Cow::Owned(unfolded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_is_kept() {
        assert_eq!(
            sniff_decode("grüße".as_bytes(), Some("iso-8859-1"), None),
            "grüße"
        );
    }

    #[test]
    fn undeclared_latin1_and_cyrillic_are_sniffed() {
        let latin1 = b"Sehr geehrte Damen und Herren, vielen Dank f\xfcr Ihre Gr\xfc\xdfe.";
        assert_eq!(
            sniff_decode(latin1, None, None),
            "Sehr geehrte Damen und Herren, vielen Dank für Ihre Grüße."
        );
        let (koi, _, _) = encoding_rs::KOI8_R.encode("Здравствуйте, у нас не работает принтер");
        assert_eq!(
            sniff_decode(&koi, None, None),
            "Здравствуйте, у нас не работает принтер"
        );
    }

    /// The definition `encoded_word_charset` implements by hand.
    fn encoded_word_charset_by_regex(header: &[u8]) -> Option<&'static Encoding> {
        let word = regex::bytes::Regex::new(r"=\?([A-Za-z0-9_.:-]{1,40})(\*[A-Za-z-]*)?\?[bBqQ]\?")
            .unwrap();
        word.captures_iter(header).find_map(|c| {
            let label = &c[1];
            if label.eq_ignore_ascii_case(b"us-ascii") || label.eq_ignore_ascii_case(b"ascii") {
                return None;
            }
            let enc = Encoding::for_label(label)?;
            (enc != UTF_8).then_some(enc)
        })
    }

    proptest::proptest! {
        #[test]
        fn encoded_word_charset_agrees_with_its_regex(
            header in "([ a-z:]{0,5}(=\\?|\\?)(koi8-r|iso-8859-2|utf-8|US-ASCII|bogus|[a-z0-9_.:-]{0,42})(\\*[a-z-]{0,3})?(\\?[bqxQ]\\?|\\?|=\\?)[a-z=?]{0,4}){0,4}"
        ) {
            proptest::prop_assert_eq!(
                encoded_word_charset(header.as_bytes()),
                encoded_word_charset_by_regex(header.as_bytes())
            );
        }
    }

    /// The vendor-escape rewrite of `decode_iso_2022_jp`, byte by byte (its definition).
    fn iso_2022_jp_rewrite_by_bytes(bytes: &[u8]) -> Vec<u8> {
        let mut fixed = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if let Some((len, replacement)) = escape_at(bytes, i) {
                if escape_at(bytes, i + len).is_none() {
                    fixed.extend_from_slice(replacement);
                }
                i += len;
                continue;
            }
            fixed.push(bytes[i]);
            i += 1;
        }
        fixed
    }

    proptest::proptest! {
        #[test]
        fn iso_2022_jp_decoding_agrees_with_the_bytewise_rewrite(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"\x1b\x1b\x0e\x0f$((BJI@OQP!0az\n".to_vec()),
                0..40,
            )
        ) {
            let rewritten = iso_2022_jp_rewrite_by_bytes(&bytes);
            let (expected, _) = ISO_2022_JP.decode_without_bom_handling(&rewritten);
            proptest::prop_assert_eq!(decode_iso_2022_jp(&bytes), expected);
        }
    }

    #[test]
    fn header_charset_hint_decides_tiny_bodies() {
        let hint = encoded_word_charset(b"Subject: =?KOI8-R?B?1MXT1A==?=\n");
        assert_eq!(hint, Some(encoding_rs::KOI8_R));
        assert_eq!(sniff_decode(b"\xf4\xe5\xf3\xf4", None, hint), "ТЕСТ");
    }

    #[test]
    fn raw_jis_runs_inside_text_are_decoded() {
        assert_eq!(
            fix_embedded_iso_2022_jp("a \x1b$B%I%-%e%a%s%H\x1b(B.txt"),
            "a ドキュメント.txt"
        );
    }

    #[test]
    fn encoded_words_join_split_characters_and_keep_adjacent_text() {
        // "é" split over two B words, an unpadded word, text right after a word
        assert_eq!(
            decode_encoded_words("=?UTF-8?B?UmVuww==?= =?UTF-8?B?qWUgTGF2YWw=?=").as_deref(),
            Some("Renée Laval")
        );
        assert_eq!(
            decode_encoded_words("=?utf-8?B?eHB0bw?=").as_deref(),
            Some("xpto")
        );
        assert_eq!(
            decode_encoded_words("=?UTF-8?Q?Caf=C3=A9?==?UTF-8?Q?_au_lait?=. Fin").as_deref(),
            Some("Café au lait. Fin")
        );
        assert_eq!(
            decode_encoded_words("Re: =?iso-8859-1?Q?Pr=FCfung?= morgen").as_deref(),
            Some("Re: Prüfung morgen")
        );
        assert_eq!(decode_encoded_words("plain"), None);
    }

    #[test]
    fn windows_1250_under_an_iso_8859_2_label_is_recovered() {
        let (bytes, _, _) = WINDOWS_1250.encode("„tiskárna“ – Děkuji");
        assert_eq!(
            sniff_decode(&bytes, Some("iso-8859-2"), None),
            "„tiskárna“ – Děkuji"
        );
    }

    #[test]
    fn euc_jp_labelled_iso_2022_jp_is_recovered() {
        let (euc, _, _) =
            EUC_JP.encode("次のあて先へのメッセージはエラーのため送信できませんでした。");
        assert_eq!(
            decode_iso_2022_jp(&euc),
            "次のあて先へのメッセージはエラーのため送信できませんでした。"
        );
    }

    #[test]
    fn shift_jis_labelled_iso_2022_jp_is_recovered() {
        let (sjis, _, _) = SHIFT_JIS.encode("お問い合わせありがとうございます");
        assert_eq!(
            sniff_decode(&sjis, Some("iso-2022-jp"), None),
            "お問い合わせありがとうございます"
        );
    }

    #[test]
    fn padded_base64_is_complete_whatever_its_length() {
        // 11 bytes: one `=`; 10 bytes: two; 9 bytes: none needed.
        assert!(base64_complete(b"aGVsbG8gd29y\nbGQ=\n"));
        assert!(base64_complete(b"aGVsbG8gd29y\nbA==\n"));
        assert!(base64_complete(b"aGVsbG8gd29y\n"));
        // Unpadded: mail-parser would drop the last byte or two.
        assert!(!base64_complete(b"aGVsbG8gd29y\nbGQ\n"));
        assert!(!base64_complete(b"aGVsbG8gd29y\nbA\n"));
    }

    #[test]
    fn lenient_base64_keeps_full_quanta() {
        assert_eq!(lenient_base64(b"aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(lenient_base64(b"aGVsbG8gd29ybGQ"), b"hello world");
        assert_eq!(lenient_base64(b"aGVs\nbG8g\nd29y\nbGQx!x"), b"hello world1");
        assert_eq!(lenient_base64(b"aGVsbG8gd29ybGQ=\n=="), b"hello world");
    }

    /// The unfolding before it searched line breaks with `memchr`.
    fn unfold_value_reference(v: &str) -> String {
        v.split(['\r', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn unfold_value_joins_the_trimmed_pieces() {
        let mut values: Vec<String> = [
            "",
            " plain ",
            "a\r\n b",
            "a\n\tb\r\n\r\n  c  ",
            "\r\n",
            "\u{2003}x\u{2003}\ny\r",
            "Subject: =?utf-8?q?x?=\r\n =?utf-8?q?y?=",
        ]
        .map(str::to_string)
        .to_vec();
        // Header blocks of the fixtures, field by field (values keep their folding).
        for text in crate::mail::test_texts() {
            let mut field = String::new();
            for line in text.split_inclusive('\n') {
                if !line.starts_with([' ', '\t']) {
                    values.push(std::mem::take(&mut field));
                }
                field.push_str(line);
            }
            values.push(field);
        }
        for v in &values {
            assert_eq!(unfold_value(v), unfold_value_reference(v), "{v:?}");
        }
    }
}
