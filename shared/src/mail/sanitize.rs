//! The HTML body made safe to render inside a helpdesk: `body_html_sanitized`.
//!
//! A mail's HTML is written by whoever sent the mail. Rendered as it is in a helpdesk's web UI it
//! is stored cross-site scripting (scripts, event handlers, `javascript:` links), phishing
//! (forms, overlays positioned over the helpdesk's own page), a tracker (remote images tell the
//! sender when and from where an agent opened the ticket) and a cross-site request forger (a
//! relative image URL is fetched from the helpdesk's own origin with the agent's cookies).
//!
//! `ammonia` (an allowlist sanitiser on html5ever, the HTML5 tree builder browsers' parsers
//! follow) keeps only what is listed here:
//! - its default formatting elements (paragraphs, lists, tables, links, images, quotes, …);
//!   everything else goes, and the content of `script`, `style`, `title`, frames, forms'
//!   controls, `svg` and `math` goes with it;
//! - no event handlers, no `id`/`class`/`name` (no clobbering of the helpdesk page's own names);
//! - links (`href`) to `http`, `https`, `mailto` and `tel` only, with `rel="noopener noreferrer"`;
//!   relative URLs are dropped (they would resolve against the helpdesk);
//! - images (`src`) only from the mail itself: `cid:` parts and `data:image/{png,jpeg,gif,webp,bmp}`;
//!   a remote image keeps its `alt` text but loses its `src` (never fetched: no tracking pixel);
//! - inline `style` with layout and typography properties only (no `position`, `display`,
//!   `z-index`, `background` images, no `url(…)`, no CSS escapes, no negative lengths), so the
//!   mail keeps its look but cannot hide text or draw over the helpdesk's page;
//! - the legacy table attributes mail layouts use (`width`, `bgcolor`, `cellpadding`, `valign`, …);
//!   comments (and Outlook's conditional comments) are dropped.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

/// HTML above this size is not sanitised (`body_html_sanitized` is then `null` and a helpdesk
/// gets the text body): html5ever's tree costs several times the HTML in memory.
pub(crate) const MAX_SANITIZED_HTML: usize = 4 * 1024 * 1024;

/// Style properties kept in `style` attributes: colours, fonts, text, box sizes and borders.
const STYLE_PROPERTIES: &[&str] = &[
    "background-color",
    "border",
    "border-bottom",
    "border-bottom-color",
    "border-bottom-style",
    "border-bottom-width",
    "border-collapse",
    "border-color",
    "border-left",
    "border-left-color",
    "border-left-style",
    "border-left-width",
    "border-radius",
    "border-right",
    "border-right-color",
    "border-right-style",
    "border-right-width",
    "border-spacing",
    "border-style",
    "border-top",
    "border-top-color",
    "border-top-style",
    "border-top-width",
    "border-width",
    "color",
    "direction",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-variant",
    "font-weight",
    "height",
    "letter-spacing",
    "line-height",
    "list-style-type",
    "margin",
    "margin-bottom",
    "margin-left",
    "margin-right",
    "margin-top",
    "max-width",
    "min-width",
    "overflow-wrap",
    "padding",
    "padding-bottom",
    "padding-left",
    "padding-right",
    "padding-top",
    "table-layout",
    "text-align",
    "text-decoration",
    "text-indent",
    "text-transform",
    "vertical-align",
    "white-space",
    "width",
    "word-break",
    "word-wrap",
];

/// The image types a `data:` image may have (no SVG: it is a document, not a picture).
const DATA_IMAGE_TYPES: &[&str] = &["png", "jpeg", "jpg", "gif", "webp", "bmp"];

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .add_tags(["font"])
        .clean_content_tags(HashSet::from([
            "script", "style", "title", "iframe", "frame", "frameset", "object", "embed", "applet",
            "template", "noembed", "noframes", "textarea", "select", "button", "svg", "math",
        ]))
        .add_generic_attributes(["style", "dir"])
        .add_tag_attributes("font", ["color", "face", "size"])
        .add_tag_attributes(
            "table",
            [
                "width",
                "height",
                "border",
                "cellpadding",
                "cellspacing",
                "bgcolor",
            ],
        )
        .add_tag_attributes("tr", ["valign", "bgcolor", "height"])
        .add_tag_attributes("td", ["valign", "bgcolor", "width", "height", "nowrap"])
        .add_tag_attributes("th", ["valign", "bgcolor", "width", "height", "nowrap"])
        .add_tag_attributes("div", ["align"])
        .add_tag_attributes("p", ["align"])
        .url_schemes(HashSet::from([
            "http", "https", "mailto", "tel", "cid", "data",
        ]))
        .url_relative(ammonia::UrlRelative::Deny)
        .filter_style_properties(STYLE_PROPERTIES.iter().copied().collect())
        .attribute_filter(filter_attribute);
    builder
});

/// `html` with everything a helpdesk must not render removed (see the module docs); `None` when
/// it is over [`MAX_SANITIZED_HTML`].
pub(crate) fn sanitize(html: &str) -> Option<String> {
    (html.len() <= MAX_SANITIZED_HTML).then(|| SANITIZER.clean(html).to_string())
}

/// Per attribute, after ammonia's own allowlists: which URL kinds each URL attribute may have,
/// and which `style` declarations reach ammonia's property filter.
fn filter_attribute<'u>(_element: &str, attribute: &str, value: &'u str) -> Option<Cow<'u, str>> {
    match attribute {
        "src" => is_embedded_image(value).then_some(Cow::Borrowed(value)),
        "href" => matches!(
            url_scheme(value).as_deref(),
            Some("http" | "https" | "mailto" | "tel")
        )
        .then_some(Cow::Borrowed(value)),
        "style" => safe_declarations(value),
        // `cite` (blockquote, q, del, ins) is a URL a browser never loads: only web addresses.
        "cite" => matches!(url_scheme(value).as_deref(), Some("http" | "https"))
            .then_some(Cow::Borrowed(value)),
        _ => Some(Cow::Borrowed(value)),
    }
}

/// The URL's scheme as a browser reads it (ASCII tabs and newlines ignored, leading spaces
/// trimmed), lower case; `None` for a relative URL.
fn url_scheme(value: &str) -> Option<String> {
    let cleaned: String = value
        .trim_start_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control())
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .take(64)
        .collect();
    let (scheme, _) = cleaned.split_once(':')?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// An image that is part of the mail: a `cid:` part or a `data:` picture.
fn is_embedded_image(value: &str) -> bool {
    match url_scheme(value).as_deref() {
        Some("cid") => true,
        Some("data") => {
            let rest = value.trim_start().get(5..).unwrap_or_default();
            let media = rest.split([';', ',']).next().unwrap_or_default().trim();
            media
                .to_ascii_lowercase()
                .strip_prefix("image/")
                .is_some_and(|kind| DATA_IMAGE_TYPES.contains(&kind))
        }
        _ => false,
    }
}

/// The declarations of a `style` attribute that may reach ammonia's property filter: allowed
/// properties only, none with a URL, a CSS function other than colours, an escape, a comment or
/// a negative length. `None` (attribute dropped) when nothing is left. An escape anywhere drops the whole attribute: it
/// could hide a `;` or a property name from this split.
fn safe_declarations(style: &str) -> Option<Cow<'_, str>> {
    if style.contains(['\\', '<', '>', '@']) || style.contains("/*") {
        return None;
    }
    let kept: Vec<&str> = style
        .split(';')
        .filter(|declaration| {
            let lower = declaration.to_ascii_lowercase();
            let functions_ok = lower.match_indices('(').all(|(at, _)| {
                let name = lower[..at]
                    .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap_or_default();
                matches!(name, "rgb" | "rgba" | "hsl" | "hsla")
            });
            let Some((property, value)) = lower.split_once(':') else {
                return false;
            };
            STYLE_PROPERTIES.contains(&property.trim())
                && functions_ok
                && !has_negative_number(value)
                && !lower.contains("url")
                && !lower.contains("expression")
        })
        .collect();
    let joined = kept.join(";");
    if joined.trim().is_empty() {
        None
    } else if joined.len() == style.len() {
        Some(Cow::Borrowed(style))
    } else {
        Some(Cow::Owned(joined))
    }
}

/// Whether a CSS value holds a negative number (`-1px`, `-.5em`), as opposed to a hyphenated
/// word (`sans-serif`, `pre-wrap`).
fn has_negative_number(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'-'
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-'))
            && bytes
                .get(i + 1)
                .is_some_and(|n| n.is_ascii_digit() || *n == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_read_as_a_browser_reads_them() {
        assert_eq!(
            url_scheme(" JavaScript:alert(1)").as_deref(),
            Some("javascript")
        );
        assert_eq!(url_scheme("java\tscript:x").as_deref(), Some("javascript"));
        assert_eq!(url_scheme("/relative/path"), None);
        assert_eq!(url_scheme("cid:image001.png@01D9").as_deref(), Some("cid"));
        assert!(is_embedded_image("data:image/png;base64,iVBORw0KGgo="));
        assert!(!is_embedded_image("data:image/svg+xml;base64,PHN2Zz4="));
        assert!(!is_embedded_image("data:text/html,<script>"));
        assert!(!is_embedded_image("https://tracker.example/p.gif"));
    }

    #[test]
    fn style_declarations_keep_looks_and_lose_urls_functions_and_negatives() {
        assert_eq!(
            safe_declarations("color: rgb(1,2,3); font-family: sans-serif").as_deref(),
            Some("color: rgb(1,2,3); font-family: sans-serif")
        );
        assert_eq!(
            safe_declarations("color:red;background:url(https://t.example/x.gif)").as_deref(),
            Some("color:red")
        );
        assert_eq!(
            safe_declarations("margin-top:-500px;color:blue").as_deref(),
            Some("color:blue")
        );
        assert_eq!(safe_declarations("width: expression(alert(1))"), None);
        assert_eq!(safe_declarations("color: re\\64"), None);
        assert_eq!(safe_declarations("color: calc(1px)"), None);
        assert_eq!(safe_declarations("display:none"), None);
        assert_eq!(
            safe_declarations("position:fixed;Color:red").as_deref(),
            Some("Color:red")
        );
        assert!(!has_negative_number("pre-wrap") && has_negative_number(" -.5em"));
    }
}
