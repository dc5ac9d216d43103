//! Attachment names: the file name a part declares (RFC 2231 continuations decoded whole), made
//! safe to store (last path component, no controls or bidi overrides, Windows-refused characters
//! replaced, bounded length), and the content type a name implies when a part declares none.

use super::codec;

/// A suggested filename reduced to what is safe to store and show: its last path component (RFC
/// 2183 2.3: "The receiving MUA SHOULD NOT respect any directory path information that may seem
/// to be present in the filename parameter"), without control characters and without the
/// invisible format characters that reorder or hide text (`invoice` + U+202E + `fdp.exe` reads
/// as `invoiceexe.pdf`), with the characters Windows refuses in names as `_` (`:` opens an NTFS
/// stream; `<>"|?*`), trimmed, and at most [`MAX_FILENAME_BYTES`] of UTF-8 with its extension
/// kept. `None` when nothing is left, or only `.`/`..`. Applies to every attachment: MIME,
/// uuencoded and TNEF.
pub(crate) fn terminal_filename(name: &str) -> Option<String> {
    let last = name
        .split(['/', '\\'])
        .rfind(|component| !component.trim().is_empty())?;
    let clean: String = last
        .chars()
        .filter(|&c| !c.is_control() && !is_invisible_format(c))
        .map(|c| {
            if matches!(c, ':' | '<' | '>' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = clean.trim();
    (!clean.trim_matches('.').is_empty()).then(|| bounded_filename(clean))
}

/// The longest attachment name kept, in bytes of UTF-8: below the 255 bytes file systems and
/// helpdesk databases (RT's `Attachments.Filename`) take.
pub(crate) const MAX_FILENAME_BYTES: usize = 200;

/// Bidi embeddings, overrides and isolates, marks, zero-width characters and the BOM: format
/// characters with no glyph that change how the rest of a name reads.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// `name` cut to [`MAX_FILENAME_BYTES`], keeping its extension (up to 16 bytes) visible: the
/// stem is shortened and ends in `…`.
fn bounded_filename(name: &str) -> String {
    if name.len() <= MAX_FILENAME_BYTES {
        return name.to_string();
    }
    let extension = name
        .rfind('.')
        .filter(|&dot| dot > 0 && name.len() - dot <= 16)
        .map_or("", |dot| &name[dot..]);
    let stem = &name[..name.len() - extension.len()];
    let mut room = MAX_FILENAME_BYTES - extension.len() - '…'.len_utf8();
    while !stem.is_char_boundary(room) {
        room -= 1;
    }
    format!("{}…{extension}", stem[..room].trim_end())
}

/// RFC 2231 `filename*0*=charset'lang'%xx; filename*1*=%xx; ...`: percent-decodes every
/// segment to bytes first and decodes the whole with the charset of segment 0 (parsers that
/// decode segment by segment garble the later ones).
pub(crate) fn rfc2231_continued_name(head: &[u8]) -> Option<String> {
    static PARAM: std::sync::LazyLock<regex::bytes::Regex> = std::sync::LazyLock::new(|| {
        regex::bytes::Regex::new(
            r#"(?i)(?:^|[;\s])(filename|name)\*(\d+)(\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)"#,
        )
        .expect("static regex")
    });
    for wanted in [&b"filename"[..], &b"name"[..]] {
        let mut segments: Vec<(usize, bool, Vec<u8>)> = PARAM
            .captures_iter(head)
            .filter(|c| c[1].eq_ignore_ascii_case(wanted))
            .filter_map(|c| {
                let index: usize = std::str::from_utf8(&c[2]).ok()?.parse().ok()?;
                let value = c[4].strip_prefix(b"\"").unwrap_or(&c[4]);
                let value = value.strip_suffix(b"\"").unwrap_or(value);
                Some((index, !c[3].is_empty(), value.to_vec()))
            })
            .collect();
        if segments.is_empty() {
            continue;
        }
        segments.sort_by_key(|s| s.0);
        let mut charset: Option<String> = None;
        let mut bytes = Vec::new();
        for (i, (_, encoded, value)) in segments.iter().enumerate() {
            let mut value: &[u8] = value;
            if i == 0 && *encoded {
                let mut parts = value.splitn(3, |&b| b == b'\'');
                if let (Some(cs), Some(_lang), Some(rest)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    charset = Some(String::from_utf8_lossy(cs).into_owned());
                    value = rest;
                }
            }
            if *encoded {
                bytes.extend(codec::percent_decode(value));
            } else {
                bytes.extend_from_slice(value);
            }
        }
        let text = match charset.as_deref().filter(|c| !c.is_empty()) {
            Some(cs) if codec::is_iso_2022_jp_label(cs) => codec::decode_iso_2022_jp(&bytes),
            Some(cs) => match encoding_rs::Encoding::for_label(cs.as_bytes()) {
                Some(enc) => enc.decode_without_bom_handling(&bytes).0.into_owned(),
                None => codec::sniff_decode(&bytes, None, None).into_owned(),
            },
            None => codec::sniff_decode(&bytes, None, None).into_owned(),
        };
        return Some(text);
    }
    None
}

/// A content type from a file extension, for attachments that carry none (uuencode, files in a
/// TNEF without a MIME tag).
pub(crate) fn content_type_for(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "zip" => "application/zip",
        "doc" => "application/msword",
        "xls" => "application/vnd.ms-excel",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "htm" | "html" => "text/html",
        "rtf" => "application/rtf",
        "csv" => "text/csv",
        "xml" => "application/xml",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "eml" => "message/rfc822",
        "msg" => "application/vnd.ms-outlook",
        "ics" => "text/calendar",
        "vcf" => "text/vcard",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "tif" | "tiff" => "image/tiff",
        "gz" => "application/gzip",
        "7z" => "application/x-7z-compressed",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_filenames_keep_only_their_last_path_component() {
        let cases = [
            ("report.pdf", Some("report.pdf")),
            ("../../etc/passwd", Some("passwd")),
            (
                "C:\\Users\\jane\\Desktop\\invoice 2024.xlsx",
                Some("invoice 2024.xlsx"),
            ),
            ("/var/tmp/a.txt", Some("a.txt")),
            ("folder/", Some("folder")),
            (
                "name\u{0}with\ncontrols\u{85}.txt",
                Some("namewithcontrols.txt"),
            ),
            ("  spaced.doc  ", Some("spaced.doc")),
            ("..", None),
            ("dir/..", None),
            ("/", None),
            ("\u{7}", None),
            ("...hidden", Some("...hidden")),
            ("C:file.txt", Some("C_file.txt")),
            ("invoice\u{202E}fdp.exe", Some("invoicefdp.exe")),
            ("\u{2067}report\u{2069}\u{200F}.pdf", Some("report.pdf")),
            ("doc.txt:Zone.Identifier", Some("doc.txt_Zone.Identifier")),
            ("a<b>\"c|d?e*.png", Some("a_b__c_d_e_.png")),
            ("\u{202E}", None),
        ];
        for (name, expected) in cases {
            assert_eq!(terminal_filename(name).as_deref(), expected, "{name:?}");
        }
    }

    #[test]
    fn long_attachment_names_are_cut_with_their_extension_kept() {
        let long = format!("{}.pdf", "a".repeat(300));
        let cut = terminal_filename(&long).unwrap();
        assert_eq!(cut.len(), MAX_FILENAME_BYTES);
        assert!(cut.ends_with("a….pdf"), "{cut}");
        let wide = format!("{}.xlsx", "é".repeat(150));
        let cut = terminal_filename(&wide).unwrap();
        assert!(
            cut.len() <= MAX_FILENAME_BYTES && cut.ends_with("é….xlsx"),
            "{cut}"
        );
        let no_extension = "b".repeat(400);
        assert!(terminal_filename(&no_extension).unwrap().ends_with("b…"));
        let odd_extension = format!("x.{}", "c".repeat(300));
        assert_eq!(
            terminal_filename(&odd_extension).unwrap().len(),
            MAX_FILENAME_BYTES
        );
        assert_eq!(terminal_filename("short.txt").as_deref(), Some("short.txt"));
    }
}
