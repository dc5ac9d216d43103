//! The mail's originator (`from` of the draft): `From`, else `Sender`, else `Reply-To`, else
//! the envelope sender (`Return-Path`), each taken as leniently as mail clients take it.
//!
//! A ticket without a requester is worse than one with an odd one, so an originator that is
//! not a plain `name <local@domain>` keeps what it has: a bare local part (`MAILER-DAEMON`),
//! a comment as the name (`MAILER-DAEMON (Mail Delivery System)`), a name with an empty
//! address (`"Support" <>`), a quoted string or phrase without angle brackets, an empty group
//! (`Automated System:;`, RFC 6854). `address` then holds the address text as written (maybe
//! without `@`, maybe empty). A field counts as missing when it has neither a name nor any
//! address text (`From: <>`), and the next one is tried.

use super::auto::Headers;
use super::codec;
use super::draft::MailAddress;
use mail_parser::Message;

/// The originator fields in the order they stand in for `From`.
const FIELDS: [&str; 4] = ["from", "sender", "reply-to", "return-path"];

/// The draft's `from`: the first of [`FIELDS`] with a name or address text.
pub(crate) fn originator(message: &Message<'_>, headers: &Headers<'_>) -> Option<MailAddress> {
    FIELDS.iter().find_map(|field| {
        let raw = headers.first(field);
        let parsed = match *field {
            "from" => message.from(),
            "sender" => message.sender(),
            "reply-to" => message.reply_to(),
            _ => None,
        };
        let plain = parsed.and_then(|a| super::addresses(a).into_iter().next());
        match plain {
            Some(mut address) => {
                if let Some(name) = raw
                    .as_deref()
                    .and_then(|raw| encoded_display_name(raw, &address.address))
                {
                    address.name = Some(name);
                }
                Some(address)
            }
            None => raw.as_deref().and_then(lenient),
        }
    })
}

/// The display name of a single-address field whose name has encoded-words, decoded by
/// `codec::decode_encoded_words` (split characters, unpadded base64).
fn encoded_display_name(raw: &str, address: &str) -> Option<String> {
    if !raw.contains("=?") || raw.matches('<').count() != 1 {
        return None;
    }
    let (name, rest) = raw.split_once('<')?;
    if !rest
        .trim_start()
        .to_ascii_lowercase()
        .starts_with(&address.to_ascii_lowercase())
    {
        return None;
    }
    clean_name(name)
}

/// A name as shown: encoded-words decoded, quotes and quoted-pair backslashes removed,
/// whitespace unfolded. `None` when nothing is left.
fn clean_name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let unquoted = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => unescape_quoted_pairs(inner),
        None => raw.replace('"', ""),
    };
    let decoded = codec::decode_encoded_words(&unquoted).unwrap_or(unquoted);
    let name = codec::unfold(&codec::fix_embedded_iso_2022_jp(&decoded))
        .trim_matches(['"', '\'', ' '])
        .to_string();
    (!name.is_empty()).then_some(name)
}

fn unescape_quoted_pairs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Positions of `wanted` in `s` outside quoted strings, comments and angle brackets.
fn top_level(s: &str, wanted: char) -> impl Iterator<Item = usize> + '_ {
    let mut quoted = false;
    let mut escaped = false;
    let mut comment = 0usize;
    let mut angle = false;
    s.char_indices().filter_map(move |(i, c)| {
        if escaped {
            escaped = false;
            return None;
        }
        let top = !quoted && comment == 0 && !angle;
        let hit = top && c == wanted;
        match c {
            '\\' if quoted || comment > 0 => escaped = true,
            '"' if comment == 0 && !angle => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted => comment = comment.saturating_sub(1),
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            _ => {}
        }
        hit.then_some(i)
    })
}

/// The text of `s` outside comments, and the text of its comments joined by spaces.
fn split_comments(s: &str) -> (String, String) {
    let (mut outside, mut comments) = (String::new(), String::new());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        let in_comment = depth > 0;
        if escaped {
            escaped = false;
        } else if c == '\\' && (quoted || in_comment) {
            escaped = true;
            if in_comment {
                continue;
            }
        } else if c == '"' && !in_comment {
            quoted = !quoted;
        } else if c == '(' && !quoted {
            depth += 1;
            if depth == 1 {
                if !comments.is_empty() {
                    comments.push(' ');
                }
                continue;
            }
        } else if c == ')' && !quoted && in_comment {
            depth -= 1;
            if depth == 0 {
                continue;
            }
        }
        if depth > 0 {
            comments.push(c);
        } else {
            outside.push(c);
        }
    }
    (outside, comments)
}

/// One originator field read leniently (see the module documentation); `None` when it has
/// neither a name nor address text.
pub(crate) fn lenient(raw: &str) -> Option<MailAddress> {
    let raw = raw.trim();
    // A group (`name: member, ...;`): its first member with something in it, else the group
    // name alone.
    if let Some(colon) = top_level(raw, ':').next() {
        let group_name = clean_name(&raw[..colon]);
        let members = raw[colon + 1..].trim().trim_end_matches(';');
        let first_member = split_list(members).into_iter().find_map(lenient);
        return match first_member {
            Some(member) => Some(member),
            None => group_name.map(|name| MailAddress {
                name: Some(name),
                address: String::new(),
            }),
        };
    }
    // Several originators (`a, b`): the first with something in it.
    let list = split_list(raw);
    if list.len() > 1 {
        return list.into_iter().find_map(lenient);
    }
    if let Some(lt) = top_level(raw, '<').next() {
        let (phrase, comment_in_phrase) = split_comments(&raw[..lt]);
        let inside = &raw[lt + 1..];
        let address = inside.split('>').next().unwrap_or(inside);
        let address = split_comments(address).0.trim().to_string();
        let name = clean_name(&phrase).or_else(|| clean_name(&comment_in_phrase));
        return (name.is_some() || !address.is_empty()).then_some(MailAddress { name, address });
    }
    let (outside, comments) = split_comments(raw);
    let outside = outside.trim();
    let comment_name = clean_name(&comments);
    if outside.starts_with('"') {
        // A quoted string without angle brackets: a name only.
        let name = clean_name(outside).or(comment_name);
        return name.map(|name| MailAddress {
            name: Some(name),
            address: String::new(),
        });
    }
    let words: Vec<&str> = outside.split_whitespace().collect();
    let (name, address) = match words.as_slice() {
        [] => (comment_name, String::new()),
        // One token: the address text (a bare local part like `MAILER-DAEMON`).
        [token] => (comment_name, (*token).to_string()),
        // A phrase: the token with `@` is the address, the rest the name.
        _ => match words.iter().position(|w| w.contains('@')) {
            Some(at) => {
                let rest: Vec<&str> = words
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != at)
                    .map(|(_, w)| *w)
                    .collect();
                (
                    clean_name(&rest.join(" ")).or(comment_name),
                    words[at].to_string(),
                )
            }
            None => (clean_name(outside).or(comment_name), String::new()),
        },
    };
    (name.is_some() || !address.is_empty()).then_some(MailAddress { name, address })
}

/// `s` split at its top-level commas, empty pieces dropped.
fn split_list(s: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for comma in top_level(s, ',') {
        pieces.push(&s[start..comma]);
        start = comma + 1;
    }
    pieces.push(&s[start..]);
    pieces.retain(|p| !p.trim().is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> Option<(Option<String>, String)> {
        lenient(raw).map(|a| (a.name, a.address))
    }

    fn some(name: Option<&str>, address: &str) -> Option<(Option<String>, String)> {
        Some((name.map(str::to_string), address.to_string()))
    }

    #[test]
    fn odd_originators_keep_what_they_have() {
        let cases = [
            ("MAILER-DAEMON", some(None, "MAILER-DAEMON")),
            (
                "MAILER-DAEMON (Mail Delivery System)",
                some(Some("Mail Delivery System"), "MAILER-DAEMON"),
            ),
            ("\"Support Team\" <>", some(Some("Support Team"), "")),
            ("\"Jane \\\"JD\\\" Doe\"", some(Some("Jane \"JD\" Doe"), "")),
            ("Jane Doe", some(Some("Jane Doe"), "")),
            (
                "(Mail Delivery System)",
                some(Some("Mail Delivery System"), ""),
            ),
            (
                "undisclosed-recipients:;",
                some(Some("undisclosed-recipients"), ""),
            ),
            (
                "Automated System: noreply (robot), ops@example.com;",
                some(Some("robot"), "noreply"),
            ),
            ("<MAILER-DAEMON>", some(None, "MAILER-DAEMON")),
            ("=?iso-8859-1?Q?J=FCrgen?= <>", some(Some("Jürgen"), "")),
            (
                "jane@example.com Jane",
                some(Some("Jane"), "jane@example.com"),
            ),
            ("<>", None),
            ("", None),
            ("()", None),
            (":;", None),
            ("\"\" <>", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(read(raw), expected, "{raw:?}");
        }
    }
}
