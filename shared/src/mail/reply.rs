//! The new part of a reply: quoted history and signature removed from the text body.
//!
//! Cuts at the first quote header ("On … wrote:", Outlook's "From: … Sent: …" block,
//! "-----Original Message-----", localized variants), at a signature delimiter ("-- ") or a
//! mobile signature ("Sent from my iPhone"), and drops `>` quoted lines (interleaved answers
//! stay). When nothing is left the whole body is kept: better too much than an empty ticket.

use regex::Regex;
use std::sync::{LazyLock, OnceLock};

/// A line regex with bounded repetitions (`.{1,250}`), checked behind a cheap gate: `gate` is
/// the same pattern with the bounds dropped (`.+` / `.*`), so it matches a superset of lines and
/// runs on the lazy DFA. Each bounded repetition spans part of the (anchored) line, so on a line
/// of at most [`BOUND`] characters the gate and the exact pattern agree; the exact pattern is
/// needed only for longer lines, and compiled on the first one. Its Unicode NFA is large: building
/// it cost ~110 M instructions (tens of ms) in every process's first parse, when it was eager.
struct GatedRegex {
    gate: Regex,
    exact_pattern: &'static str,
    exact: OnceLock<Regex>,
}

/// The bound of every `.{m,n}` in a [`GatedRegex`] pattern.
const BOUND: usize = 250;

impl GatedRegex {
    fn new(exact_pattern: &'static str) -> Self {
        let bounded_plus = format!(".{{1,{BOUND}}}");
        let bounded_star = format!(".{{0,{BOUND}}}");
        let gate = exact_pattern
            .replace(&bounded_plus, ".+")
            .replace(&bounded_star, ".*");
        debug_assert!(
            !gate.contains(&format!(",{BOUND}}}")),
            "only .{{0,{BOUND}}} / .{{1,{BOUND}}} bounds"
        );
        Self {
            gate: Regex::new(&gate).expect("static regex"),
            exact_pattern,
            exact: OnceLock::new(),
        }
    }

    fn is_match(&self, line: &str) -> bool {
        if !self.gate.is_match(line) {
            return false;
        }
        if line.len() <= BOUND || line.chars().count() <= BOUND {
            return true;
        }
        self.exact
            .get_or_init(|| Regex::new(self.exact_pattern).expect("static regex"))
            .is_match(line)
    }
}

/// Lines that start the quoted original on their own.
static QUOTE_HEADER_LINE: LazyLock<GatedRegex> = LazyLock::new(|| {
    GatedRegex::new(concat!(
        r"(?i)^\s*(",
        r"-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|messaggio originale|oorspronkelijk bericht|originalmeddelande|original meddelelse|alkuperäinen viesti|wiadomość oryginalna|původní zpráva|исходное сообщение)\s*-{2,}",
        r"|-{2,}\s*(forwarded message|weitergeleitete nachricht|message transféré)\s*-{2,}",
        r"|_{20,}",
        r"|on\s.{1,250}\swrote:",
        r"|am\s.{1,250}\sschrieb\s.{0,250}:",
        r"|le\s.{1,250}\sa écrit\s?:",
        r"|el\s.{1,250}\sescribió:",
        r"|il\s.{1,250}\sha scritto:",
        r"|op\s.{1,250}\sschreef\s.{0,250}:",
        r"|den\s.{1,250}\sskrev\s.{0,250}:",
        r"|.{1,250}\s(wrote|schrieb|a écrit|escribió|ha scritto|schreef|skrev)\s?:",
        r")\s*$"
    ))
});

/// "On Tue, 3 Jan 2024 at 10:00, Someone <a@b.c>" whose "wrote:" is on the next line (Gmail
/// wraps long attributions).
static WRAPPED_ATTRIBUTION: LazyLock<GatedRegex> =
    LazyLock::new(|| GatedRegex::new(r"(?i)^\s*(on|am|le|el|il|op|den)\s.{1,250}$"));
static WROTE_ALONE: LazyLock<GatedRegex> = LazyLock::new(|| {
    GatedRegex::new(
        r"(?i)^\s*.{0,250}(wrote|schrieb|a écrit|escribió|ha scritto|schreef|skrev)\s?:\s*$",
    )
});

/// Outlook's header block: a `From:` line followed closely by `Sent:`/`Date:`/`To:`/`Subject:`.
static OUTLOOK_FROM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*\*?(from|von|de|da|van|från|fra|od|от)\s*:\*?\s*\S").expect("static regex")
});
static OUTLOOK_NEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*\*?(sent|date|to|subject|cc|gesendet|datum|an|betreff|envoyé|date|à|objet|enviado|para|asunto|inviato|data|oggetto|verzonden|aan|onderwerp|skickat|till|ämne|sendt|til|emne|wysłano|temat|отправлено|тема)\s*:\*?").expect("static regex")
});

/// Signature starts: RFC 3676 `-- ` and mobile client signatures.
static SIGNATURE_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(--\s?|sent from my (iphone|ipad|android|samsung|galaxy|mobile|phone|blackberry|huawei|xiaomi).*|sent from (outlook|mail) for (ios|android|windows).*|get outlook for (ios|android).*|von meinem (iphone|ipad|smartphone|samsung).* gesendet|envoyé de mon (iphone|ipad|smartphone).*|enviado desde mi (iphone|ipad|smartphone).*)\s*$")
        .expect("static regex")
});

/// How much of the body is searched for quote headers and signature delimiters.
const MAX_SCAN_BYTES: usize = 1024 * 1024;

/// Whether a (trimmed) line could start a signature: `--` alone or a mobile client's line.
/// [`SIGNATURE_LINE`] matches a `--` line only when nothing but whitespace follows the dashes.
fn maybe_signature(trimmed: &str) -> bool {
    if trimmed.starts_with("--") {
        return trimmed == "--";
    }
    // Byte-wise ASCII case folding: no non-ASCII character lower-cases into these prefixes.
    // Their first letters rule out most lines before the prefixes are compared.
    let head = trimmed.as_bytes();
    if !head
        .first()
        .is_some_and(|b| matches!(b.to_ascii_lowercase(), b's' | b'g' | b'v' | b'e'))
    {
        return false;
    }
    ["sent ", "get ", "von ", "envoy", "enviad"]
        .iter()
        .any(|p| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

/// Whether a (trimmed) line could be a [`QUOTE_HEADER_LINE`]: every alternative ends with a
/// colon, or is a dash rule (`--…--`) or an underscore rule (`__…_`).
fn maybe_quote_header(trimmed: &str) -> bool {
    trimmed.ends_with(':')
        || (trimmed.starts_with("--") && trimmed.ends_with("--"))
        || (trimmed.starts_with("__") && trimmed.ends_with('_'))
}

/// Whether a (trimmed) line could be an [`OUTLOOK_FROM`] line: a colon among the first bytes and
/// a first letter (after an optional `*`) that starts one of the words; none of them has a
/// non-ASCII case variant besides the Cyrillic `О`.
fn maybe_outlook_from(trimmed: &str) -> bool {
    let word = trimmed.strip_prefix('*').unwrap_or(trimmed);
    word.starts_with(['f', 'F', 'v', 'V', 'd', 'D', 'o', 'O', 'о', 'О'])
        && trimmed.bytes().take(14).any(|b| b == b':')
}

/// The byte offset of `line` (a slice of `text`) in `text`.
fn offset_in(text: &str, line: &str) -> usize {
    line.as_ptr() as usize - text.as_ptr() as usize
}

/// What the scan for the start of the quoted history found.
struct Scan {
    /// Where the quoted original or the signature starts (the body's length when nowhere).
    cut: usize,
    /// Where the first non-blank line starts (`cut` when all lines before it are blank).
    first_content: usize,
    /// Whether a line before `cut` may be a `>` quote (a line was one, or not every line
    /// before `cut` was looked at).
    may_have_quoted_lines: bool,
}

/// Finds the first quote header or signature line.
fn scan(body: &str) -> Scan {
    let mut lines = body.lines().peekable();
    let mut first_content = None;
    let mut may_have_quoted_lines = false;
    // Quote headers and signatures sit near the top of a reply: only the first lines are
    // searched, which keeps huge bodies linear and cheap.
    let mut scanned_bytes = 0;
    let mut cut = body.len();
    while let Some(line) = lines.next() {
        scanned_bytes += line.len() + 1;
        if scanned_bytes > MAX_SCAN_BYTES {
            may_have_quoted_lines = true;
            break;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        first_content.get_or_insert_with(|| offset_in(body, line));
        if trimmed.starts_with('>') {
            may_have_quoted_lines = true;
            continue;
        }
        // Cheap byte checks first; the regexes only see lines that could match.
        if maybe_quote_header(trimmed) && QUOTE_HEADER_LINE.is_match(line) {
            cut = offset_in(body, line);
            break;
        }
        if lines.peek().is_some_and(|n| {
            n.trim_end().ends_with(':')
                && !n.trim_start().starts_with('>')
                && WROTE_ALONE.is_match(n)
        }) && WRAPPED_ATTRIBUTION.is_match(line)
        {
            cut = offset_in(body, line);
            break;
        }
        if maybe_outlook_from(trimmed) && OUTLOOK_FROM.is_match(line) {
            let following = lines
                .clone()
                .take(6)
                .filter(|l| OUTLOOK_NEXT.is_match(l))
                .count();
            if following >= 2 {
                cut = offset_in(body, line);
                break;
            }
        }
        if maybe_signature(trimmed) && SIGNATURE_LINE.is_match(line) {
            cut = offset_in(body, line);
            break;
        }
    }
    Scan {
        cut,
        first_content: first_content.unwrap_or(cut).min(cut),
        may_have_quoted_lines,
    }
}

/// The new part of `body`; `body` itself when nothing remains after stripping.
pub(crate) fn reply_text(body: &str) -> String {
    let scan = scan(body);
    let kept = &body[..scan.cut];
    let text = if !scan.may_have_quoted_lines && memchr::memchr(b'\r', kept.as_bytes()).is_none() {
        // Nothing to drop but the leading blank lines, and `\n` is the only line break: the
        // lines joined by `\n` are the text itself.
        kept[scan.first_content..].trim_end().to_string()
    } else {
        let mut text = String::with_capacity(kept.len());
        for line in kept.lines().filter(|l| !l.trim_start().starts_with('>')) {
            if text.is_empty() && line.trim().is_empty() {
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        let trimmed = text.trim_end().len();
        text.truncate(trimmed);
        text
    };
    if text.is_empty() {
        body.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gate-plus-length shortcut answers exactly what the bounded pattern answers, on both
    /// sides of the bound (middles of 1..=400 characters, ASCII and non-ASCII, one and two middles).
    #[test]
    fn gated_regex_agrees_with_the_bounded_pattern() {
        let rules = [&*QUOTE_HEADER_LINE, &*WRAPPED_ATTRIBUTION, &*WROTE_ALONE];
        let exact: Vec<Regex> = rules
            .iter()
            .map(|r| Regex::new(r.exact_pattern).unwrap())
            .collect();
        let mut checked = 0;
        for n in [1, 2, 100, 240, 248, 249, 250, 251, 252, 260, 300, 400] {
            for fill in ["x", "ü"] {
                let mid = fill.repeat(n);
                let lines = [
                    format!("On {mid} wrote:"),
                    format!("  on {mid} wrote:  "),
                    format!("Am {mid} schrieb {mid}:"),
                    format!("Am 1.2. schrieb {mid}:"),
                    format!("{mid} wrote:"),
                    format!("On {mid}"),
                    format!("{mid} skrev:"),
                    format!("Le {mid} a écrit :"),
                    mid.clone(),
                ];
                for line in &lines {
                    for (rule, exact) in rules.iter().zip(&exact) {
                        assert_eq!(rule.is_match(line), exact.is_match(line), "{n} {line:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 500);
        // Long lines took the exact path: the bound still applies.
        assert!(!QUOTE_HEADER_LINE.is_match(&format!("On {} wrote:", "x".repeat(300))));
        assert!(QUOTE_HEADER_LINE.is_match(&format!("On {} wrote:", "x".repeat(200))));
    }

    /// The signature gate as it was before (any `--` line passed).
    fn maybe_signature_before(trimmed: &str) -> bool {
        if trimmed.starts_with("--") {
            return true;
        }
        // Byte-wise ASCII case folding: no non-ASCII character lower-cases into these prefixes.
        let head = trimmed.as_bytes();
        ["sent ", "get ", "von ", "envoy", "enviad"]
            .iter()
            .any(|p| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
    }

    /// `reply_text` as it was before the scan stopped collecting lines and gated more
    /// regexes: the oracle for the tests below.
    fn reply_text_before(body: &str) -> String {
        let lines: Vec<&str> = body.lines().collect();
        let mut end = lines.len();
        // Quote headers and signatures sit near the top of a reply: only the first lines are
        // searched, which keeps huge bodies linear and cheap.
        let mut scanned_bytes = 0;
        for (i, line) in lines.iter().enumerate() {
            scanned_bytes += line.len() + 1;
            if scanned_bytes > MAX_SCAN_BYTES {
                break;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('>') {
                continue;
            }
            // Cheap byte checks first; the regexes only see lines that could match.
            let ends_with_colon = trimmed.ends_with(':');
            let rule_line = trimmed.starts_with("--") || trimmed.starts_with("__");
            if (ends_with_colon || rule_line) && QUOTE_HEADER_LINE.is_match(line) {
                end = i;
                break;
            }
            if lines.get(i + 1).is_some_and(|n| {
                n.trim_end().ends_with(':')
                    && !n.trim_start().starts_with('>')
                    && WROTE_ALONE.is_match(n)
            }) && WRAPPED_ATTRIBUTION.is_match(line)
            {
                end = i;
                break;
            }
            let colon_early = trimmed.bytes().take(14).any(|b| b == b':');
            if colon_early && OUTLOOK_FROM.is_match(line) {
                let following = lines[i + 1..]
                    .iter()
                    .take(6)
                    .filter(|l| OUTLOOK_NEXT.is_match(l))
                    .count();
                if following >= 2 {
                    end = i;
                    break;
                }
            }
            if maybe_signature_before(trimmed) && SIGNATURE_LINE.is_match(line) {
                end = i;
                break;
            }
        }
        let mut text = String::new();
        for line in lines[..end]
            .iter()
            .filter(|l| !l.trim_start().starts_with('>'))
        {
            if text.is_empty() && line.trim().is_empty() {
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        let trimmed = text.trim_end().len();
        text.truncate(trimmed);
        if text.is_empty() {
            body.to_string()
        } else {
            text
        }
    }

    fn crafted_bodies() -> Vec<String> {
        [
            "Hi\n\n-- \nJohn",
            "Hi\n--boundary\nmore\n--\t\nsig",
            "  -- \nindented dashes are no signature",
            "\n\n  \nText\r\nwith CRLF\r\n\r\n",
            "\u{2003}\nlead\n",
            "a\n> quoted\nb",
            "a\n-----Original Message-----\nold",
            "a\n--- Forwarded message ---\nold",
            "a\n______________________________\nFrom: x\n",
            "a\n__ x :\n",
            "a\n-- x wrote:\n",
            "a\n*From:* x\n*Sent:* y\n*To:* z\n",
            "a\nFrom        :  far colon\nSent: y\nTo: z\n",
            "a\nFrom              :  colon too far for the gate\nSent: y\nTo: z\n",
            "a\nſent from my iPhone",
            "a\nОт: Иван\nОтправлено: вчера\nТема: x\n",
            "a\nod: x\ndata: y\ntemat: z\n",
            "a\nOn Tue, Jan 2 Someone <a@b>\nwrote:\n> x",
            "a\nSent from my iPhone",
            "",
            "\n\n",
            "> only quoted",
            "no newline at end",
            "trailing blank lines\n\n\n",
        ]
        .map(str::to_string)
        .to_vec()
    }

    #[test]
    fn matches_the_line_by_line_reference() {
        let mut texts = crafted_bodies();
        texts.extend(crate::mail::test_texts());
        // A body over the scan limit: the lines past it are never looked at.
        texts.push(format!(
            "{}\n> q\n-- \nsig",
            "line\n".repeat(MAX_SCAN_BYTES / 5)
        ));
        for body in &texts {
            assert_eq!(reply_text(body), reply_text_before(body), "{body:?}");
        }
    }

    /// The byte gates in front of the line regexes never reject a line the regex matches and
    /// the gates before them let through.
    #[test]
    fn gates_never_reject_a_regex_match() {
        let mut lines: Vec<String> = crafted_bodies()
            .iter()
            .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        lines.extend(
            crate::mail::test_texts()
                .iter()
                .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>()),
        );
        let mut matched = [0; 3];
        for line in &lines {
            let trimmed = line.trim();
            // The gates before: `--`/`__` rules or a colon at the end; a colon early.
            let rule_or_colon =
                trimmed.ends_with(':') || trimmed.starts_with("--") || trimmed.starts_with("__");
            if rule_or_colon && QUOTE_HEADER_LINE.is_match(line) {
                matched[0] += 1;
                assert!(maybe_quote_header(trimmed), "{line:?}");
            }
            if OUTLOOK_FROM.is_match(line) && trimmed.bytes().take(14).any(|b| b == b':') {
                matched[1] += 1;
                assert!(maybe_outlook_from(trimmed), "{line:?}");
            }
            if maybe_signature_before(trimmed) && SIGNATURE_LINE.is_match(line) {
                matched[2] += 1;
                assert!(maybe_signature(trimmed), "{line:?}");
            }
        }
        assert!(matched.iter().all(|&n| n >= 3), "{matched:?}");
    }

    #[test]
    fn gmail_attribution_and_quotes_are_removed() {
        let body = "Thanks, that fixed it.\n\nOn Tue, Jan 2, 2024 at 10:00 AM Help Desk <help@example.com> wrote:\n> Please restart.\n> Bye";
        assert_eq!(reply_text(body), "Thanks, that fixed it.");
        let wrapped = "Works now.\n\nOn Tue, Jan 2, 2024 at 10:00 AM Help Desk <help@example.com>\nwrote:\n> x";
        assert_eq!(reply_text(wrapped), "Works now.");
    }

    #[test]
    fn outlook_header_block_is_removed() {
        let body = "Still broken.\n\n________________________________\nFrom: Help Desk <help@example.com>\nSent: Tuesday, January 2, 2024 10:00 AM\nTo: Me\nSubject: RE: printer\n\nold text";
        assert_eq!(reply_text(body), "Still broken.");
        let body2 = "Danke!\n\nVon: Help Desk <help@example.com>\nGesendet: Dienstag, 2. Januar 2024 10:00\nAn: Ich\nBetreff: AW: Drucker\n\nalt";
        assert_eq!(reply_text(body2), "Danke!");
        let body3 = "ok\n\n-----Original Message-----\nFrom: x\n";
        assert_eq!(reply_text(body3), "ok");
    }

    #[test]
    fn signature_is_removed_and_interleaved_answers_stay() {
        assert_eq!(reply_text("Hi\n\n-- \nJohn\nACME"), "Hi");
        assert_eq!(reply_text("Hi\n\nSent from my iPhone"), "Hi");
        assert_eq!(
            reply_text("> question?\nanswer\n> q2\nanswer 2"),
            "answer\nanswer 2"
        );
    }

    #[test]
    fn nothing_left_keeps_the_body() {
        assert_eq!(reply_text("> only quoted"), "> only quoted");
    }
}
