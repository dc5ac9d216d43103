//! Charset repairs for text the MIME parser could not decode cleanly: undeclared 8-bit text,
//! wrong labels, ISO-2022-JP with vendor extensions (and Shift_JIS sent as ISO-2022-JP).

use encoding_rs::{Encoding, ISO_2022_JP, SHIFT_JIS, UTF_8};
use std::borrow::Cow;

/// Decodes `bytes` to text: as UTF-8 when valid, else with the declared charset when it decodes
/// without errors, else with the charset `chardetng` sniffs (Firefox's detector).
pub(crate) fn sniff_decode<'a>(bytes: &'a [u8], declared: Option<&str>) -> Cow<'a, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    let declared = declared.and_then(|label| Encoding::for_label(label.trim().as_bytes()));
    if let Some(enc) = declared
        && enc != UTF_8
    {
        let (text, had_errors) = enc.decode_without_bom_handling(bytes);
        if !had_errors {
            return Cow::Owned(text.into_owned());
        }
        if enc == ISO_2022_JP {
            // Japanese mail labelled ISO-2022-JP that carries Shift_JIS / CP932 bytes.
            let (text, had_errors) = SHIFT_JIS.decode_without_bom_handling(bytes);
            if !had_errors {
                return Cow::Owned(text.into_owned());
            }
        }
    }
    let mut detector = chardetng::EncodingDetector::new();
    detector.feed(bytes, true);
    let guess = detector.guess(None, true);
    let (text, _, _) = guess.decode(bytes);
    Cow::Owned(text.into_owned())
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
/// (CP50221) and NEC/IBM rows (in the WHATWG JIS X 0208 index). Falls back to Shift_JIS / CP932
/// when the bytes are 8-bit.
pub(crate) fn decode_iso_2022_jp(bytes: &[u8]) -> String {
    if !bytes.is_ascii() {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_string();
        }
        let (text, had_errors) = SHIFT_JIS.decode_without_bom_handling(bytes);
        if !had_errors {
            return text.into_owned();
        }
    }
    let mut fixed = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x1B if bytes[i + 1..].starts_with(b"$(")
                && matches!(bytes.get(i + 3), Some(b'O' | b'Q' | b'P')) =>
            {
                fixed.extend_from_slice(b"\x1b$B");
                i += 4;
                continue;
            }
            0x0E => fixed.extend_from_slice(b"\x1b(I"),
            0x0F => fixed.extend_from_slice(b"\x1b(B"),
            b => fixed.push(b),
        }
        i += 1;
    }
    let (text, _) = ISO_2022_JP.decode_without_bom_handling(&fixed);
    text.into_owned()
}

/// Whether text decoded by the MIME parser needs a second look: it holds U+FFFD replacement
/// characters that the raw bytes did not.
pub(crate) fn looks_misdecoded(decoded: &str) -> bool {
    decoded.contains('\u{FFFD}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_is_kept() {
        assert_eq!(
            sniff_decode("grüße".as_bytes(), Some("iso-8859-1")),
            "grüße"
        );
    }

    #[test]
    fn undeclared_latin1_and_cyrillic_are_sniffed() {
        let latin1 = b"Sehr geehrte Damen und Herren, vielen Dank f\xfcr Ihre Gr\xfc\xdfe.";
        assert_eq!(
            sniff_decode(latin1, None),
            "Sehr geehrte Damen und Herren, vielen Dank für Ihre Grüße."
        );
        let (koi, _, _) = encoding_rs::KOI8_R.encode("Здравствуйте, у нас не работает принтер");
        assert_eq!(
            sniff_decode(&koi, None),
            "Здравствуйте, у нас не работает принтер"
        );
    }

    #[test]
    fn shift_jis_labelled_iso_2022_jp_is_recovered() {
        let (sjis, _, _) = SHIFT_JIS.encode("お問い合わせありがとうございます");
        assert_eq!(
            sniff_decode(&sjis, Some("iso-2022-jp")),
            "お問い合わせありがとうございます"
        );
    }
}
