//! HTML → plain text for HTML-only mail: what a helpdesk agent needs to read the ticket.
//!
//! The markup is tokenized by `html5gum` (a WHATWG-conformant tokenizer: character references,
//! raw-text elements, comments and broken markup are its job) through its callback emitter, so
//! no token is allocated. This module only renders: one pass over the token stream straight into
//! the output, linear in the input, no DOM and no table layout.
//!
//! Rendering rules:
//! - block elements (`p`, `div`, `h1`–`h6`, `li`, `tr`, `table`, `blockquote`, `pre`, …) break
//!   lines; paragraphs, headings, top-level lists and tables, quotes and `pre` are set apart by
//!   one blank line; `<br>` ends a line; at most one blank line in a row; trailing spaces trimmed;
//! - runs of whitespace collapse to one space outside `<pre>`; non-breaking spaces become
//!   (uncollapsed) spaces; output line ends are LF;
//! - `<blockquote>` content is prefixed with `> ` per nesting level (the reply extractor drops
//!   those lines), `<hr>` is a line of underscores (Outlook's reply separator, which the reply
//!   extractor also recognises);
//! - list items start with `* ` (`1. ` … in `<ol>`, honouring `start`), nested lists indent by
//!   two spaces;
//! - the cells of a table row share one line, separated by two spaces; each row is a line;
//! - `<img>` shows its `alt` text as `[alt]`; links show their text, followed by ` <url>` when
//!   the target is a web or mail address that the text does not already show (long tracking
//!   URLs, `cid:`, `javascript:`, anchors and relative links are left out);
//! - the content of `<title>`, `<style>`, `<script>`, `<noscript>`, `<iframe>`, `<template>` and
//!   comments is skipped, and so is an element with the `hidden` attribute or `display:none` in
//!   its `style` (the preheader text of newsletters and notifications): it is rendered, and the
//!   rendering discarded at its end tag, so one left unclosed in broken markup hides nothing.
//!
//! Hostile input stays linear: quote prefixes and list indentation are capped in depth, and the
//! output is cut (with a note) once it grows past a fixed multiple of the input.
//!
//! Why not a crate such as `html2text`: it renders for a terminal (every line hard-wrapped to a
//! fixed width, which a helpdesk then wraps again; links as numbered footnotes), it builds an
//! html5ever DOM of the whole document first (memory in proportion to the markup, where this
//! pass holds only the output), and hidden elements need its optional CSS engine. What this
//! module must keep is narrow and tested here: the `> ` quote prefixes and `___` separators the
//! reply extractor reads, hidden preheaders (and thread markers) left out, and linear time.

use html5gum::emitters::callback::{Callback, CallbackEmitter, CallbackEvent};
use html5gum::{Emitter, ForwardingEmitter, Span, Tokenizer};
use std::convert::Infallible;

/// Quote levels beyond this still quote, but with no more `> ` than this.
const MAX_QUOTE_PREFIX: usize = 16;
/// List levels beyond this are indented like this one.
const MAX_LIST_INDENT: usize = 8;
/// Links whose target is longer than this are shown without it (tracking redirects).
const MAX_SHOWN_URL: usize = 200;
/// How much of a link's text is searched for its target.
const MAX_SEARCHED_LINK_TEXT: usize = 1024;
/// The line Outlook's `<hr>` reply separator becomes (the reply extractor matches `_{20,}`).
const HR_LINE: &[u8] = b"________________________________";
/// Hidden elements nested deeper than this are shown (each open one keeps a copy of the state).
const MAX_HIDDEN_DEPTH: usize = 32;
/// A hidden element is only hidden while the state it must copy is small: at most this many open
/// lists and this many bytes of open-link target. Beyond (hostile nesting, huge `href`s), it is
/// shown, so that every hidden element costs a bounded copy and the rendering stays linear.
const MAX_HIDDEN_COPY_LISTS: usize = 32;
const MAX_HIDDEN_COPY_HREF: usize = 2048;
/// Appended when the output hits its size cap.
const TRUNCATED_NOTE: &str = "\n[HTML body text truncated; see body_html]";

/// HTML above this size is not rendered to text; the draft then carries a short note instead.
/// The rendering is linear, but a text-heavy HTML body costs about 4× its size in memory (the
/// HTML, its text and the reply text), so a huge one (such as `parse_memory`'s 50 MB test
/// mail) is kept to the one copy in `body_html`. HTML bulked up by inline `data:` images renders
/// to little text and fits below this.
const MAX_HTML_TO_TEXT: usize = 16 * 1024 * 1024;

/// Readable text from HTML: tags removed, blocks on their own lines, quotes prefixed with `> `;
/// a short note instead for HTML over [`MAX_HTML_TO_TEXT`].
pub(crate) fn html_to_text(html: &str) -> String {
    if html.len() > MAX_HTML_TO_TEXT {
        return "[HTML body too large to convert to text; see body_html]".to_string();
    }
    let mut renderer = Renderer::new(html.len());
    let mut emitter = CallbackEmitter::new(|event: CallbackEvent<'_>, _: Span<()>| {
        renderer.handle(event);
        None::<Infallible>
    });
    // Switch to raw text after <style>, <script>, <title>, … as a browser's tree builder would.
    emitter.naively_switch_states(true);
    // The string reader cannot fail.
    let _ = Tokenizer::new_with_emitter(html, WithoutErrors(emitter)).finish();
    renderer.finish()
}

/// The callback emitter with parse-error reporting switched off: the tokenizer then skips its
/// per-byte check for control characters and noncharacters and the error events (together about
/// 70 % of the tokenizer's instructions on a layout-table bounce), which this renderer ignores.
struct WithoutErrors<F: Callback<Infallible, ()>>(CallbackEmitter<F>);

impl<F: Callback<Infallible, ()>> ForwardingEmitter for WithoutErrors<F> {
    type Token = Infallible;

    fn inner(&mut self) -> &mut impl Emitter<Token = Infallible> {
        &mut self.0
    }

    #[inline]
    fn should_emit_errors(&mut self) -> bool {
        false
    }
}

/// What a start or end tag means for the rendering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    /// Set apart by a blank line.
    Paragraph,
    /// On its own line(s).
    Block,
    Blockquote,
    Pre,
    List {
        ordered: bool,
    },
    ListItem,
    Table,
    Cell,
    Br,
    Hr,
    Img,
    Link,
    /// Content never shown (raw text elements the tokenizer switches to raw text for).
    RawHidden,
    Template,
    /// `<plaintext>`: everything after it is preformatted text.
    Plaintext,
    /// Inline or unknown: no effect.
    Other,
}

fn classify(name: &[u8]) -> Tag {
    match name {
        b"p" | b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6" | b"dl" | b"figure" => Tag::Paragraph,
        b"div" | b"tr" | b"dt" | b"dd" | b"address" | b"article" | b"aside" | b"center"
        | b"details" | b"summary" | b"fieldset" | b"legend" | b"figcaption" | b"footer"
        | b"form" | b"header" | b"main" | b"nav" | b"section" | b"caption" | b"body" | b"html"
        | b"hgroup" | b"menu" | b"dir" | b"option" | b"textarea" | b"frameset" => Tag::Block,
        b"blockquote" => Tag::Blockquote,
        b"pre" | b"listing" | b"xmp" => Tag::Pre,
        b"ul" => Tag::List { ordered: false },
        b"ol" => Tag::List { ordered: true },
        b"li" => Tag::ListItem,
        b"table" => Tag::Table,
        b"td" | b"th" => Tag::Cell,
        b"br" => Tag::Br,
        b"hr" => Tag::Hr,
        b"img" => Tag::Img,
        b"a" => Tag::Link,
        b"title" | b"style" | b"script" | b"noscript" | b"iframe" | b"noembed" => Tag::RawHidden,
        b"template" => Tag::Template,
        b"plaintext" => Tag::Plaintext,
        _ => Tag::Other,
    }
}

/// The attribute of the current start tag whose value is being read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attr {
    Href,
    Alt,
    Start,
    Style,
    Ignored,
}

/// Elements with no content and no end tag: hiding one hides only itself.
fn is_void(name: &[u8]) -> bool {
    matches!(
        name,
        b"area"
            | b"base"
            | b"br"
            | b"col"
            | b"embed"
            | b"hr"
            | b"img"
            | b"input"
            | b"link"
            | b"meta"
            | b"param"
            | b"source"
            | b"track"
            | b"wbr"
    )
}

/// Whether a `style` attribute says `display: none` (any case and spacing, `!important` or not).
fn style_hides(style: &[u8]) -> bool {
    fn strip_word<'a>(s: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
        let s = s.trim_ascii_start();
        (s.len() >= word.len() && s[..word.len()].eq_ignore_ascii_case(word))
            .then(|| &s[word.len()..])
    }
    style.split(|&b| b == b';').any(|declaration| {
        strip_word(declaration, b"display")
            .and_then(|rest| strip_word(rest, b":"))
            .and_then(|rest| strip_word(rest, b"none"))
            .is_some_and(|rest| {
                let rest = rest.trim_ascii_start();
                rest.is_empty() || rest.starts_with(b"!")
            })
    })
}

/// An open element that is not displayed: the renderer's state and output length from before it,
/// to go back to at its end tag, and how many elements of the same name opened inside it are
/// still open.
#[derive(Clone)]
struct HiddenElement {
    name: Vec<u8>,
    nested_same_name: usize,
    out_len: usize,
    before: Box<Renderer>,
}

/// A line break owed before the next content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    None,
    Line,
    Blank,
}

#[derive(Clone)]
struct List {
    ordered: bool,
    next_number: u64,
}

/// The link being rendered: its target and where its text starts in the output.
#[derive(Clone)]
struct OpenLink {
    text_start: Option<usize>,
    has_words: bool,
}

#[derive(Clone)]
struct Renderer {
    out: Vec<u8>,
    /// Open elements that are not displayed, innermost last.
    hidden_elements: Vec<HiddenElement>,
    /// Output size at which rendering stops.
    limit: usize,
    truncated: bool,
    /// Where the current line starts in `out`, and where its content starts (after the quote
    /// prefix and indentation).
    line_start: usize,
    content_start: usize,
    /// Whether the current line has been started (prefix written).
    line_open: bool,
    /// Whether the last finished line was blank.
    last_line_blank: bool,
    pending_break: Break,
    /// Quote depth of the blank line owed (the shallowest depth seen while it was owed).
    pending_blank_depth: usize,
    pending_space: bool,
    pending_cell_gap: bool,
    pending_bullet: Option<Bullet>,
    quote_depth: usize,
    lists: Vec<List>,
    table_depth: usize,
    pre_depth: usize,
    /// Drop a newline right after `<pre>` (as HTML parsing does).
    pre_just_opened: bool,
    raw_hidden: bool,
    template_depth: usize,
    link: Option<OpenLink>,
    link_href: Vec<u8>,
    // The start tag being read.
    tag: Tag,
    tag_name: Vec<u8>,
    tag_hidden: bool,
    in_start_tag: bool,
    attr: Attr,
    href: Vec<u8>,
    alt: Vec<u8>,
    start: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Bullet {
    Star,
    Number(u64),
}

impl Renderer {
    fn new(input_len: usize) -> Self {
        Renderer {
            out: Vec::with_capacity(input_len / 4),
            hidden_elements: Vec::new(),
            limit: input_len.saturating_mul(4).saturating_add(64 * 1024),
            truncated: false,
            line_start: 0,
            content_start: 0,
            line_open: false,
            last_line_blank: true,
            pending_break: Break::None,
            pending_blank_depth: 0,
            pending_space: false,
            pending_cell_gap: false,
            pending_bullet: None,
            quote_depth: 0,
            lists: Vec::new(),
            table_depth: 0,
            pre_depth: 0,
            pre_just_opened: false,
            raw_hidden: false,
            template_depth: 0,
            link: None,
            link_href: Vec::new(),
            tag: Tag::Other,
            tag_name: Vec::new(),
            tag_hidden: false,
            in_start_tag: false,
            attr: Attr::Ignored,
            href: Vec::new(),
            alt: Vec::new(),
            start: Vec::new(),
        }
    }

    fn hidden(&self) -> bool {
        self.raw_hidden || self.template_depth > 0 || self.truncated
    }

    fn handle(&mut self, event: CallbackEvent<'_>) {
        match event {
            CallbackEvent::OpenStartTag { name } => {
                self.tag = classify(name);
                self.tag_name.clear();
                self.tag_name.extend_from_slice(name);
                self.tag_hidden = false;
                self.in_start_tag = true;
                self.attr = Attr::Ignored;
                self.href.clear();
                self.alt.clear();
                self.start.clear();
            }
            CallbackEvent::AttributeName { name } if self.in_start_tag => {
                self.attr = match (self.tag, name) {
                    (Tag::Link, b"href") => Attr::Href,
                    (Tag::Img, b"alt") => Attr::Alt,
                    (Tag::List { ordered: true }, b"start") => Attr::Start,
                    (_, b"style") => Attr::Style,
                    (_, b"hidden") => {
                        self.tag_hidden = true;
                        Attr::Ignored
                    }
                    _ => Attr::Ignored,
                };
            }
            CallbackEvent::AttributeValue { value } if self.in_start_tag => {
                // The first of duplicated attributes wins, as in HTML.
                let target = match self.attr {
                    Attr::Href => &mut self.href,
                    Attr::Alt => &mut self.alt,
                    Attr::Start => &mut self.start,
                    Attr::Style => {
                        self.tag_hidden |= style_hides(value);
                        self.attr = Attr::Ignored;
                        return;
                    }
                    Attr::Ignored => return,
                };
                if target.is_empty() {
                    target.extend_from_slice(value);
                }
                self.attr = Attr::Ignored;
            }
            CallbackEvent::CloseStartTag { .. } => {
                self.in_start_tag = false;
                let void = is_void(&self.tag_name);
                if self.tag_hidden && void {
                    return; // e.g. a hidden tracking `<img>`: not even its alt text
                }
                let hide = self.tag_hidden
                    && self.hidden_elements.len() < MAX_HIDDEN_DEPTH
                    && self.lists.len() <= MAX_HIDDEN_COPY_LISTS
                    && self.link_href.len() <= MAX_HIDDEN_COPY_HREF;
                if hide {
                    let before = self.snapshot();
                    self.hidden_elements.push(HiddenElement {
                        name: self.tag_name.clone(),
                        nested_same_name: 0,
                        out_len: self.out.len(),
                        before,
                    });
                } else if let Some(open) = self.hidden_elements.last_mut() {
                    // Its end tag is not the hidden element's (a nested hidden one's end tag
                    // is taken by that one).
                    if !void && open.name == self.tag_name {
                        open.nested_same_name += 1;
                    }
                }
                self.start_tag(self.tag);
            }
            CallbackEvent::EndTag { name } => {
                self.in_start_tag = false;
                // In raw text the only end tag the tokenizer reports is the one closing it.
                if self.raw_hidden {
                    self.raw_hidden = false;
                    return;
                }
                if let Some(open) = self.hidden_elements.last_mut()
                    && open.name == name
                {
                    if open.nested_same_name == 0 {
                        self.discard_hidden_element();
                        return;
                    }
                    open.nested_same_name -= 1;
                }
                self.end_tag(classify(name));
            }
            CallbackEvent::String { value } if !self.hidden() => {
                if self.pre_depth > 0 {
                    self.pre_text(value);
                } else {
                    self.text(value);
                }
            }
            _ => {}
        }
    }

    /// The state to go back to at the end of a hidden element: all of it but the output (only
    /// its length matters, kept in [`HiddenElement::out_len`]) and the open hidden elements.
    /// The start tag's own attribute buffers are not copied either: the next start tag resets them.
    fn snapshot(&mut self) -> Box<Renderer> {
        let out = std::mem::take(&mut self.out);
        let hidden_elements = std::mem::take(&mut self.hidden_elements);
        let tag_buffers = (
            std::mem::take(&mut self.href),
            std::mem::take(&mut self.alt),
            std::mem::take(&mut self.start),
        );
        let before = Box::new(self.clone());
        self.out = out;
        self.hidden_elements = hidden_elements;
        (self.href, self.alt, self.start) = tag_buffers;
        before
    }

    /// The end tag of the innermost hidden element: everything rendered since it opened is cut,
    /// and the state from before it comes back.
    fn discard_hidden_element(&mut self) {
        let Some(element) = self.hidden_elements.pop() else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        let hidden_elements = std::mem::take(&mut self.hidden_elements);
        *self = *element.before;
        out.truncate(element.out_len);
        self.out = out;
        self.hidden_elements = hidden_elements;
    }

    fn start_tag(&mut self, tag: Tag) {
        match tag {
            Tag::RawHidden => self.raw_hidden = true,
            Tag::Template => self.template_depth += 1,
            _ if self.hidden() => {}
            Tag::Paragraph => self.want(Break::Blank),
            Tag::Block => self.want(Break::Line),
            Tag::Blockquote => {
                self.want(Break::Blank);
                self.quote_depth += 1;
            }
            Tag::Pre => {
                self.want(Break::Blank);
                self.pre_depth += 1;
                self.pre_just_opened = true;
            }
            Tag::Plaintext => {
                self.want(Break::Blank);
                // Never closed: the tokenizer reads the rest as text.
                self.pre_depth += 1;
            }
            Tag::List { ordered } => {
                self.want(if self.lists.is_empty() {
                    Break::Blank
                } else {
                    Break::Line
                });
                let next_number = std::str::from_utf8(&self.start)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                self.lists.push(List {
                    ordered,
                    next_number,
                });
            }
            Tag::ListItem => {
                self.want(Break::Line);
                self.pending_bullet = Some(match self.lists.last_mut() {
                    Some(list) if list.ordered => {
                        let number = list.next_number;
                        list.next_number = number.saturating_add(1);
                        Bullet::Number(number)
                    }
                    _ => Bullet::Star,
                });
            }
            Tag::Table => {
                self.want(if self.table_depth == 0 {
                    Break::Blank
                } else {
                    Break::Line
                });
                self.table_depth += 1;
            }
            Tag::Cell => self.pending_cell_gap = true,
            Tag::Br => self.line_break(),
            Tag::Hr => {
                self.want(Break::Blank);
                self.flush_break();
                self.open_line();
                self.push(HR_LINE);
                self.want(Break::Line);
            }
            Tag::Img => {
                if self.alt.iter().any(|b| !b.is_ascii_whitespace()) {
                    let alt = std::mem::take(&mut self.alt);
                    self.word(b"[");
                    self.pending_space = false;
                    self.text_inner(&alt, true);
                    self.pending_space = false;
                    self.word(b"]");
                    self.alt = alt;
                }
            }
            Tag::Link => {
                self.close_link();
                std::mem::swap(&mut self.link_href, &mut self.href);
                self.link = Some(OpenLink {
                    text_start: None,
                    has_words: false,
                });
            }
            Tag::Other => {}
        }
    }

    fn end_tag(&mut self, tag: Tag) {
        match tag {
            Tag::Template => self.template_depth = self.template_depth.saturating_sub(1),
            _ if self.hidden() => {}
            Tag::Paragraph => self.want(Break::Blank),
            Tag::Block | Tag::ListItem => {
                self.want(Break::Line);
                if tag == Tag::ListItem {
                    self.pending_bullet = None;
                }
            }
            Tag::Blockquote => {
                self.want(Break::Line);
                self.quote_depth = self.quote_depth.saturating_sub(1);
                self.want(Break::Blank);
            }
            Tag::Pre => {
                self.want(Break::Blank);
                self.pre_depth = self.pre_depth.saturating_sub(1);
            }
            Tag::List { .. } => {
                self.lists.pop();
                self.pending_bullet = None;
                self.want(if self.lists.is_empty() {
                    Break::Blank
                } else {
                    Break::Line
                });
            }
            Tag::Table => {
                self.table_depth = self.table_depth.saturating_sub(1);
                self.want(if self.table_depth == 0 {
                    Break::Blank
                } else {
                    Break::Line
                });
            }
            // `</br>` is read as `<br>` by HTML parsers.
            Tag::Br => self.line_break(),
            Tag::Link => self.close_link(),
            Tag::Cell | Tag::Hr | Tag::Img | Tag::RawHidden | Tag::Plaintext | Tag::Other => {}
        }
    }

    /// Owes a line break or blank line before the next content.
    fn want(&mut self, brk: Break) {
        if brk == Break::Blank {
            self.pending_blank_depth = if self.pending_break == Break::Blank {
                self.pending_blank_depth.min(self.quote_depth)
            } else {
                self.quote_depth
            };
        }
        self.pending_break = self.pending_break.max(brk);
        self.pending_space = false;
        self.pending_cell_gap = false;
    }

    /// Pays the owed break: ends the open line, then adds the owed blank line.
    fn flush_break(&mut self) {
        let brk = std::mem::replace(&mut self.pending_break, Break::None);
        if brk == Break::None {
            return;
        }
        if self.line_open {
            self.end_line();
        }
        if brk == Break::Blank && !self.last_line_blank {
            let depth = self.pending_blank_depth.min(self.quote_depth);
            self.open_line_with(depth, false);
            self.end_line();
        }
    }

    /// `<br>`: ends the line, an empty one included.
    fn line_break(&mut self) {
        self.flush_break();
        if !self.line_open {
            if self.out.is_empty() {
                return;
            }
            self.open_line_with(self.quote_depth, false);
        }
        self.end_line();
        self.pending_space = false;
        self.pending_cell_gap = false;
    }

    fn open_line(&mut self) {
        if !self.line_open {
            self.open_line_with(self.quote_depth, true);
        }
    }

    /// Starts a line: quote prefix, and for content lines the list indentation or bullet.
    fn open_line_with(&mut self, quote_depth: usize, content: bool) {
        self.line_start = self.out.len();
        for _ in 0..quote_depth.min(MAX_QUOTE_PREFIX) {
            self.out.extend_from_slice(b"> ");
        }
        if content {
            let levels = self.lists.len().min(MAX_LIST_INDENT);
            match self.pending_bullet.take() {
                Some(bullet) => {
                    for _ in 1..levels {
                        self.out.extend_from_slice(b"  ");
                    }
                    match bullet {
                        Bullet::Star => self.out.extend_from_slice(b"* "),
                        Bullet::Number(n) => {
                            self.out.extend_from_slice(n.to_string().as_bytes());
                            self.out.extend_from_slice(b". ");
                        }
                    }
                }
                None => {
                    for _ in 0..levels {
                        self.out.extend_from_slice(b"  ");
                    }
                }
            }
        }
        self.content_start = self.out.len();
        self.line_open = true;
    }

    /// Ends the open line: trailing whitespace trimmed, a second blank line in a row dropped.
    fn end_line(&mut self) {
        while self.out.len() > self.line_start
            && matches!(self.out.last(), Some(b' ' | b'\t' | b'\r' | b'\x0c'))
        {
            self.out.pop();
        }
        let blank = self.out.len() <= self.content_start;
        self.line_open = false;
        // A blank quoted line keeps its `>`s (trimmed above to `>` … `>`), but only one in a row.
        if blank && self.last_line_blank {
            self.out.truncate(self.line_start);
            return;
        }
        self.out.push(b'\n');
        self.last_line_blank = blank;
        if self.out.len() > self.limit {
            self.truncate();
        }
    }

    fn truncate(&mut self) {
        if !self.truncated {
            self.truncated = true;
            self.out.extend_from_slice(TRUNCATED_NOTE.as_bytes());
            self.line_open = false;
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Text outside `<pre>`: whitespace runs collapse to one space.
    fn text(&mut self, value: &[u8]) {
        self.text_inner(value, false);
    }

    fn text_inner(&mut self, value: &[u8], is_alt: bool) {
        let mut rest = value;
        while !rest.is_empty() {
            let ws = rest.iter().take_while(|b| is_html_space(**b)).count();
            if ws > 0 {
                self.pending_space = true;
                rest = &rest[ws..];
            }
            let len = rest.iter().take_while(|b| !is_html_space(**b)).count();
            if len > 0 {
                self.word(&rest[..len]);
                if !is_alt && let Some(link) = &mut self.link {
                    link.has_words = true;
                }
                rest = &rest[len..];
            }
        }
    }

    /// Writes one word: owed breaks first, then the cell gap or space, then the word.
    fn word(&mut self, word: &[u8]) {
        if self.truncated {
            return;
        }
        self.flush_break();
        if self.line_open {
            if self.pending_cell_gap {
                self.push(b"  ");
            } else if self.pending_space {
                self.push(b" ");
            }
        } else {
            self.open_line();
        }
        self.pending_space = false;
        self.pending_cell_gap = false;
        if let Some(link) = &mut self.link
            && link.text_start.is_none()
        {
            link.text_start = Some(self.out.len());
        }
        self.push_content(word);
        if self.out.len() > self.limit {
            self.truncate();
        }
    }

    /// Appends text with non-breaking spaces as plain spaces.
    fn push_content(&mut self, text: &[u8]) {
        let mut rest = text;
        while let Some(at) = rest.windows(2).position(|w| w == [0xC2, 0xA0]) {
            self.out.extend_from_slice(&rest[..at]);
            self.out.push(b' ');
            rest = &rest[at + 2..];
        }
        self.out.extend_from_slice(rest);
    }

    /// Text inside `<pre>`: kept as it is, line by line (each line gets the quote prefix).
    fn pre_text(&mut self, value: &[u8]) {
        let mut rest = value;
        if std::mem::take(&mut self.pre_just_opened) {
            rest = rest
                .strip_prefix(b"\r\n")
                .or_else(|| rest.strip_prefix(b"\n"))
                .or_else(|| rest.strip_prefix(b"\r"))
                .unwrap_or(rest);
        }
        if rest.is_empty() || self.truncated {
            return;
        }
        self.flush_break();
        if self.line_open && (self.pending_space || self.pending_cell_gap) {
            self.push(b" ");
        }
        self.pending_space = false;
        self.pending_cell_gap = false;
        while !rest.is_empty() && !self.truncated {
            let line_len = rest
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
                .unwrap_or(rest.len());
            if line_len > 0 {
                self.open_line();
                self.push_content(&rest[..line_len]);
            }
            rest = &rest[line_len..];
            if let Some(&eol) = rest.first() {
                rest = &rest[1..];
                if eol == b'\r' && rest.first() == Some(&b'\n') {
                    rest = &rest[1..];
                }
                self.open_line();
                self.end_line();
            }
        }
        if self.out.len() > self.limit {
            self.truncate();
        }
    }

    /// Ends the open link: its target follows its text when the text does not show it.
    fn close_link(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        let (Some(text_start), true) = (link.text_start, link.has_words) else {
            return;
        };
        let text_start = text_start.min(self.out.len());
        let href = std::mem::take(&mut self.link_href);
        // Only the start of a long link text is searched: keeps hostile links linear.
        let text = &self.out[text_start..];
        let text = &text[..text.len().min(MAX_SEARCHED_LINK_TEXT)];
        if let Some(shown) = shown_target(&href, text) {
            self.pending_space = true;
            self.pending_cell_gap = false;
            let mut word = Vec::with_capacity(shown.len() + 2);
            word.push(b'<');
            word.extend_from_slice(shown);
            word.push(b'>');
            self.word(&word);
        }
        self.link_href = href;
    }

    fn finish(mut self) -> String {
        self.close_link();
        if self.line_open {
            self.end_line();
        }
        let text = match String::from_utf8(self.out) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        };
        let trimmed = text.trim();
        if trimmed.len() == text.len() {
            text
        } else {
            trimmed.to_string()
        }
    }
}

/// HTML's ASCII whitespace (NBSP is not: it becomes a space that does not collapse).
fn is_html_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// The part of a link's target worth showing after its text `text`, if any: a web address
/// (`http`, `https`, `ftp`) of at most [`MAX_SHOWN_URL`] bytes, or the address of a `mailto:`
/// link, when the text does not already contain it.
fn shown_target<'a>(href: &'a [u8], text: &[u8]) -> Option<&'a [u8]> {
    let href = href.trim_ascii();
    if href.is_empty() || href.len() > MAX_SHOWN_URL || href.iter().any(|b| b.is_ascii_whitespace())
    {
        return None;
    }
    let has_scheme = |prefix: &[u8]| {
        href.len() >= prefix.len() && href[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let (shown, compared) = if has_scheme(b"mailto:") {
        let address = &href[7..];
        let address = &address[..address
            .iter()
            .position(|b| *b == b'?')
            .unwrap_or(address.len())];
        (address, address)
    } else if has_scheme(b"https://") || has_scheme(b"http://") || has_scheme(b"ftp://") {
        let after_scheme = &href[href.iter().position(|b| *b == b':').unwrap_or(0) + 3..];
        let bare = after_scheme.strip_prefix(b"www.").unwrap_or(after_scheme);
        let bare = bare.strip_suffix(b"/").unwrap_or(bare);
        (href, bare)
    } else {
        return None;
    };
    if compared.is_empty() || contains_ignore_ascii_case(text, compared) {
        return None;
    }
    Some(shown)
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::html_to_text;

    #[test]
    fn paragraphs_divs_and_breaks_make_lines() {
        assert_eq!(
            html_to_text(
                "<p>Hello,</p><p>the printer<br>is broken.</p><div>Bye</div><div>Jo</div>"
            ),
            "Hello,\n\nthe printer\nis broken.\n\nBye\nJo"
        );
        // Gmail's empty-line idiom.
        assert_eq!(
            html_to_text("<div>Hi,</div><div><br></div><div>it works.</div>"),
            "Hi,\n\nit works."
        );
        assert_eq!(html_to_text("<h2>Title</h2>text"), "Title\n\ntext");
    }

    #[test]
    fn hidden_elements_are_not_rendered() {
        // A newsletter preheader, a `hidden` element, a hidden tracking image.
        assert_eq!(
            html_to_text(
                "<div style=\"display:none;font-size:1px;max-height:0\">Preview text</div>\
                 <p>Hello,</p><p hidden>secret</p><img src=x alt=pixel style='DISPLAY: None !important'>\
                 <p>your order shipped.</p>"
            ),
            "Hello,\n\nyour order shipped."
        );
        // Nested elements of the same name inside, and a hidden one inside a hidden one.
        assert_eq!(
            html_to_text(
                "a<div style=display:none>b<div>c</div>d<div hidden>e</div>f</div>g<div>h</div>"
            ),
            // As in a browser: an element that is not displayed breaks no line either.
            "ag\nh"
        );
        // Only a `display` of `none` hides, not a property that ends in "display".
        assert_eq!(
            html_to_text(
                "<span style=\"x-display:none\">shown</span> <span style=\"display:block\">too</span>"
            ),
            "shown too"
        );
        // Under hostile nesting the hidden element is shown: its copy of the state stays small.
        let deep = format!("{}<div hidden>x</div>y", "<ul>".repeat(40));
        assert!(html_to_text(&deep).starts_with('x'));
        let long_link = format!(
            "<a href=\"https://e.example/{}\"><span hidden>x</span>y</a>",
            "q".repeat(3000)
        );
        assert_eq!(html_to_text(&long_link), "xy");
        let shallow = format!("{}<div hidden>x</div>y", "<ul>".repeat(3));
        assert_eq!(html_to_text(&shallow).trim(), "y");
        // Left open in broken markup: nothing is hidden rather than the rest of the mail.
        assert_eq!(
            html_to_text("<p>Hi</p><span hidden>x<p>all of this"),
            "Hi\n\nx\n\nall of this"
        );
        // Lists and quotes opened inside a hidden element leave no trace.
        assert_eq!(
            html_to_text(
                "<ol><li>one</li><div hidden><li>skipped</li><blockquote>q</div><li>two</li></ol>"
            ),
            "1. one\n2. two"
        );
    }

    #[test]
    fn display_none_is_read_like_css() {
        use super::style_hides;
        for hides in [
            "display:none",
            "display : none ;",
            "color:red; DISPLAY:None !important",
            "\tdisplay:\nnone",
        ] {
            assert!(style_hides(hides.as_bytes()), "{hides:?}");
        }
        for shows in [
            "display:block",
            "display:nonesuch",
            "x-display:none",
            "",
            "none",
        ] {
            assert!(!style_hides(shows.as_bytes()), "{shows:?}");
        }
    }

    #[test]
    fn whitespace_collapses_and_nbsp_stays() {
        assert_eq!(
            html_to_text("  a \n\t b<b>c</b> d&nbsp;&nbsp;&nbsp;e  \n"),
            "a bc d   e"
        );
        assert_eq!(html_to_text("x<br><br><br><br>y"), "x\n\ny");
        assert_eq!(html_to_text("<p>trailing   </p>"), "trailing");
    }

    #[test]
    fn blockquotes_are_quoted_per_level() {
        assert_eq!(
            html_to_text(
                "<p>new</p><blockquote><p>old</p><p>older</p><blockquote>oldest</blockquote></blockquote>after"
            ),
            "new\n\n> old\n>\n> older\n>\n> > oldest\n\nafter"
        );
    }

    #[test]
    fn lists_get_bullets_and_numbers() {
        assert_eq!(
            html_to_text(
                "<p>Steps:</p><ol><li>one</li><li>two<ul><li>a</li><li>b</li></ul></li></ol><p>end</p>"
            ),
            "Steps:\n\n1. one\n2. two\n  * a\n  * b\n\nend"
        );
        assert_eq!(
            html_to_text("<ol start=\"3\"><li>c<li>d</ol>"),
            "3. c\n4. d"
        );
        assert_eq!(html_to_text("<ul><li>x<br>more</li></ul>"), "* x\n  more");
    }

    #[test]
    fn table_rows_are_lines_and_cells_share_them() {
        assert_eq!(
            html_to_text(
                "<table><tr><th>Host</th><th>Status</th></tr><tr><td>mx1</td><td></td><td>down</td></tr></table>after"
            ),
            "Host  Status\nmx1  down\n\nafter"
        );
    }

    #[test]
    fn hidden_content_is_skipped() {
        assert_eq!(
            html_to_text(
                "<html><head><title>T</title><style>p{color:red}</style></head><body><script>if (a<b) x()</script>\
                 <!-- note --><template><p>t</p></template>visible<noscript>n</noscript></body></html>"
            ),
            "visible"
        );
        assert_eq!(
            html_to_text("<!--[if mso]><p>mso</p><![endif]-->text"),
            "text"
        );
    }

    #[test]
    fn images_show_alt_text() {
        assert_eq!(
            html_to_text(
                "see <img src=\"cid:x\" alt=\"screen shot\"> and <img src=\"y\"> <img alt=\"\">"
            ),
            "see [screen shot] and"
        );
    }

    #[test]
    fn links_show_targets_the_text_does_not() {
        assert_eq!(
            html_to_text("<a href=\"https://portal.example/invoices\">portal</a>"),
            "portal <https://portal.example/invoices>"
        );
        assert_eq!(
            html_to_text("<a href=\"https://www.example.com/\">example.com</a>"),
            "example.com"
        );
        assert_eq!(
            html_to_text("<a href=\"mailto:help@example.com\">help@example.com</a>"),
            "help@example.com"
        );
        assert_eq!(
            html_to_text("<a href=\"mailto:help@example.com?subject=x\">Support</a>."),
            "Support <help@example.com>."
        );
        assert_eq!(
            html_to_text(
                "<a href=\"cid:a\">x</a> <a href=\"#top\">top</a> <a href=\"/rel\">rel</a>"
            ),
            "x top rel"
        );
        let long = format!(
            "<a href=\"https://t.example/{}\">track</a>",
            "x".repeat(300)
        );
        assert_eq!(html_to_text(&long), "track");
        assert_eq!(
            html_to_text("<a href=\"https://a.example\"><img alt=\"Logo\"></a>"),
            "[Logo]"
        );
    }

    #[test]
    fn character_references_are_decoded() {
        assert_eq!(
            html_to_text("&ldquo;ok&rdquo; &amp; &lt;b&gt; &#x263A; &eacute;"),
            "“ok” & <b> ☺ é"
        );
    }

    #[test]
    fn pre_keeps_whitespace_and_lines() {
        assert_eq!(
            html_to_text(
                "<p>log:</p><pre>\nline  1\n\tline 2\n</pre><blockquote><pre>q1\nq2</pre></blockquote>"
            ),
            "log:\n\nline  1\n\tline 2\n\n> q1\n> q2"
        );
        assert_eq!(html_to_text("<pre>a\r\nb\rc</pre>"), "a\nb\nc");
    }

    #[test]
    fn hr_is_the_outlook_separator_line() {
        assert_eq!(
            html_to_text("<div>Thanks</div><hr><div><b>From:</b> Help</div>"),
            "Thanks\n\n________________________________\nFrom: Help"
        );
    }

    #[test]
    fn hostile_nesting_stays_bounded() {
        let deep = "<blockquote><ul><li>".repeat(20_000) + "x";
        let text = html_to_text(&deep);
        assert!(text.ends_with("x"), "{}", &text[text.len() - 50..]);
        let last_line = text.lines().last().unwrap();
        assert_eq!(
            last_line,
            format!("{}{}* x", "> ".repeat(16), "  ".repeat(7))
        );
        let many = "<blockquote>".repeat(10_000) + &"<p>a</p>".repeat(10_000);
        let text = html_to_text(&many);
        assert!(text.len() <= many.len() * 4 + 64 * 1024 + 100);
    }

    #[test]
    fn broken_markup_renders_something() {
        assert_eq!(html_to_text("<p>unclosed <b>bold <i>x"), "unclosed bold x");
        assert_eq!(html_to_text("a < b > c"), "a < b > c");
        assert_eq!(html_to_text("</br>x</p></blockquote>y"), "x\n\ny");
        assert_eq!(html_to_text(""), "");
    }

    /// The quoted history of HTML replies stays detectable for the reply extractor.
    #[test]
    fn html_replies_keep_their_quote_detectable() {
        use crate::mail::reply::reply_text;
        let outlook = "<div>Still broken.</div><div>Jo</div><div id=\"appendonsend\"></div>\
            <hr style=\"display:inline-block;width:98%\"><div id=\"divRplyFwdMsg\"><b>From:</b> \
            Help Desk &lt;help@example.com&gt;<br><b>Sent:</b> Tuesday, January 2, 2024 10:00<br>\
            <b>To:</b> Jo<br><b>Subject:</b> RE: printer</div><div>old text</div>";
        assert_eq!(reply_text(&html_to_text(outlook)), "Still broken.\nJo");
        let gmail = "<div dir=\"ltr\">Works now.</div><br><div class=\"gmail_quote\">\
            <div class=\"gmail_attr\">On Wed, Jan 3, 2024 at 9:05 AM Helpdesk &lt;<a \
            href=\"mailto:help@example.com\">help@example.com</a>&gt; wrote:<br></div>\
            <blockquote class=\"gmail_quote\"><p>Please update.</p></blockquote></div>";
        assert_eq!(reply_text(&html_to_text(gmail)), "Works now.");
        let apple = "Photo attached.<div><br><blockquote type=\"cite\"><div>On 3. Jan 2024, at \
            17:12, Helpdesk &lt;help@example.com&gt; wrote:</div><br><div>Send a photo?</div>\
            </blockquote></div>";
        assert_eq!(reply_text(&html_to_text(apple)), "Photo attached.");
    }

    proptest::proptest! {
        /// Tag soup from the pieces the renderer reacts to: never a panic, trimmed lines, no
        /// more than one blank line in a row, output within the size cap.
        #[test]
        fn tag_soup_renders_within_bounds(pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "<p>", "</p>", "<div>", "</div>", "<br>", "</br>", "<hr>", "<blockquote>",
                "</blockquote>", "<ul>", "</ul>", "<ol start=x>", "</ol>", "<li>", "</li>",
                "<table>", "</table>", "<tr>", "<td>", "</td>", "<pre>", "</pre>", "\n", " ",
                "\t", "&nbsp;", "&amp;", "&#0;", "é", "word", "<a href=\"https://x.example\">",
                "<a href=\"mailto:a@b\">", "</a>", "<img alt=\"pic\">", "<style>", "</style>",
                "<script>", "</script>", "<template>", "</template>", "<!--", "-->", "<", ">",
                "<plaintext>", "<title>", "</title>", "\u{a0}", "\r",
            ]),
            0..200,
        )) {
            let html = pieces.concat();
            let text = html_to_text(&html);
            proptest::prop_assert!(text.len() <= html.len() * 4 + 64 * 1024 + 64);
            let mut blank_run = 0;
            for line in text.lines() {
                proptest::prop_assert_eq!(line, line.trim_end());
                let blank = line.is_empty();
                blank_run = if blank { blank_run + 1 } else { 0 };
                proptest::prop_assert!(blank_run <= 1, "{:?}", text);
            }
        }
    }
}
