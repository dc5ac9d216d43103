#!/usr/bin/env python3
"""Baseline for the parser benchmark: Python's stdlib `email` doing the same work as
mailbridge::mail::parse on every .eml (or extension-less file) of the given directories.

Work per mail: parse (policy.default), decode subject, From/To/Cc/Reply-To addresses, Date,
Message-ID/In-Reply-To/References, walk the MIME tree to the text body (plain parts joined, HTML
kept), every other leaf as an attachment (filename, type, decoded size), and check the
auto-reply headers. Runs until it has used --min-seconds of CPU time (time.thread_time, so
other processes on a shared machine do not count) and prints one JSON line: {"files", "bytes",
"iterations", "seconds" (CPU), "wall_seconds", "mb_per_s" and "mails_per_s" (per CPU second),
"wall_mb_per_s", "errors"}.

Usage: parse_python.py [--min-seconds S] [--policy compat32|default] [--work parse|full]
                       [--per-mail] DIR...
(compat32, the default, is the faster API; the comparison uses the faster one.)
--per-mail prints one line per mail instead, `microseconds-per-run bytes path` (wall clock), to
compare with the Rust bench's MAILBRIDGE_BENCH_PER_MAIL=1 output.

--work full (with compat32) adds the rest of what mailbridge::mail::parse does, written the
way a careful Python integration would: charset fallbacks for undeclared/mislabelled text,
HTML to text (html.parser) when there is no plain part, the machine-mail rules (the same header
checks and subject patterns as shared/src/mail/auto.rs), bounce details from
message/delivery-status and returned headers, reply stripping (the quote-header, Outlook-block
and signature patterns of shared/src/mail/reply.rs) and the HMAC thread-marker checks.
"""
import email
import email.header
import hashlib
import hmac
import html.parser
import re
import email.policy
import email.utils
import json
import os
import sys
import time

AUTO_HEADERS = ("auto-submitted", "precedence", "x-auto-response-suppress", "x-autoreply",
                "x-autorespond", "x-loop", "list-id", "list-unsubscribe", "return-path")


def decode_header(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and "=?" not in value:
        # No encoded word: decode_header/make_header would return the text unchanged (or
        # fail on raw 8-bit and fall back to it), so skip building the Header object.
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:
        return str(value)


def text_of(part) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1")


def work_compat32(raw: bytes) -> dict:
    """The fast legacy API (email.policy.compat32, Python's default) with explicit decoding."""
    return work_compat32_message(email.message_from_bytes(raw))


def work_compat32_message(msg, full=False) -> dict:
    draft = {
        "subject": decode_header(msg.get("subject")),
        "message_id": str(msg.get("message-id", "") or ""),
        "in_reply_to": str(msg.get("in-reply-to", "") or ""),
        "references": str(msg.get("references", "") or "").split(),
        "date": None,
        "from": [], "to": [], "cc": [], "reply_to": [],
        "text": [], "html": None, "attachments": [], "auto": [], "dsn": [], "returned": [],
    }
    for field, key in (("from", "from"), ("to", "to"), ("cc", "cc"), ("reply-to", "reply_to")):
        values = [str(v) for v in (msg.get_all(field, []) or [])]
        draft[key] = [(decode_header(n), a) for n, a in email.utils.getaddresses(values)]
    try:
        d = email.utils.parsedate_to_datetime(str(msg.get("date"))) if msg.get("date") else None
        draft["date"] = d.isoformat() if d else None
    except Exception:
        pass
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if filename:
            filename = decode_header(filename)
        if ctype == "text/plain" and disposition != "attachment" and not filename:
            draft["text"].append(full_text_of(part) if full else text_of(part))
        elif ctype == "text/html" and disposition != "attachment" and draft["html"] is None:
            draft["html"] = full_text_of(part) if full else text_of(part)
        else:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, (bytes, bytearray)) else len(str(part.get_payload()))
            draft["attachments"].append((filename, ctype, size, part.get("content-id")))
            if full and ctype == "message/delivery-status":
                # compat32 parses the DSN fields as header blocks: one Message per block
                draft["dsn"].append("\n".join(
                    "\n".join(f"{k}: {v}" for k, v in block.items())
                    for block in part.get_payload() if hasattr(block, "items")))
            elif full and ctype in ("message/rfc822", "text/rfc822-headers"):
                inner = part.get_payload()
                if isinstance(inner, list) and inner:
                    draft["returned"].append("\n".join(f"{k}: {v}" for k, v in inner[0].items()))
                else:
                    draft["returned"].append(str(inner).split("\n\n", 1)[0])
    if not full:  # --work full reads every header once, in classify()
        for name in AUTO_HEADERS:
            value = msg.get(name)
            if value is not None:
                draft["auto"].append((name, str(value)))
    return draft


def full_text_of(part) -> str:
    payload = part.get_payload(decode=True) or b""
    return decode_text(payload, part.get_content_charset()).replace("\r\n", "\n")


def work_default(raw: bytes) -> dict:
    """The modern API (email.policy.default): decodes more for us, and is much slower."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    draft = {
        "subject": str(msg.get("subject", "") or ""),
        "message_id": str(msg.get("message-id", "") or ""),
        "in_reply_to": str(msg.get("in-reply-to", "") or ""),
        "references": str(msg.get("references", "") or "").split(),
        "date": None,
        "from": [], "to": [], "cc": [], "reply_to": [],
        "text": [], "html": None, "attachments": [], "auto": [],
    }
    for field, key in (("from", "from"), ("to", "to"), ("cc", "cc"), ("reply-to", "reply_to")):
        for value in msg.get_all(field, []) or []:
            draft[key].extend(email.utils.getaddresses([str(value)]))
    try:
        d = msg.get("date")
        if d is not None and getattr(d, "datetime", None) is not None:
            draft["date"] = d.datetime.isoformat()
    except Exception:
        pass
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if ctype == "text/plain" and disposition != "attachment" and not filename:
            try:
                draft["text"].append(part.get_content())
            except Exception:
                payload = part.get_payload(decode=True) or b""
                draft["text"].append(payload.decode("latin-1"))
        elif ctype == "text/html" and disposition != "attachment" and draft["html"] is None:
            try:
                draft["html"] = part.get_content()
            except Exception:
                draft["html"] = (part.get_payload(decode=True) or b"").decode("latin-1")
        else:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, (bytes, bytearray)) else len(str(part.get_payload()))
            draft["attachments"].append((filename, ctype, size, part.get("content-id")))
    for name in AUTO_HEADERS:
        value = msg.get(name)
        if value is not None:
            draft["auto"].append((name, str(value)))
    return draft


# ---- the rest of the ticket-draft work (--work full) --------------------------------------

THREAD_KEY = b"bench-thread-key"
OWN_ADDRESSES = ("helpdesk@mailbridge.test",)

AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|automatische antwort|"
    r"abwesenheitsnotiz|r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|"
    r"automatisch antwoord|autosvar|automaattinen vastaus|resposta autom[áa]tica|"
    r"odpowied[źz] automatyczna|automatick[áa] odpov[ěe][ďd]|out of (the )?office( reply| autoreply)?|"
    r"i am out of the office|abwesend|vacation reply)(\s*[:\-(]|\s*$)", re.I)
VACATION_WORDS = re.compile(
    r"vacation|out of (the )?office|abwesen|absent|cong[ée]s|ausencia|ferie|automatic reply|"
    r"automatische antwort|r[ée]ponse automatique", re.I)
BOUNCE_SUBJECT = re.compile(
    r"^\s*(undeliver(able|ed)( mail| message)?|undelivered mail returned to sender|"
    r"delivery status notification( \(failure\)| \(delay\))?|delivery (failure|failed|has failed)|"
    r"mail delivery (failed|failure|subsystem)|returned mail|failure notice|non remis|unzustellbar|"
    r"nicht zustellbar|message not delivered|mail system error|warning: could not send message|"
    r"delivery notification|returned to sender)", re.I)
FEEDBACK_SUBJECT = re.compile(r"^\s*(complaint about message from|abuse report|spam report|fbl report)", re.I)
STATUS_IN_TEXT = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
ADDRESS_IN_TEXT = re.compile(r"<?([A-Za-z0-9._%+=/!#$&'*?^`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?")
MESSAGE_ID_LINE = re.compile(r"^\s*Message-I[dD]\s*:\s*(<[^>\s]+>|\S+@\S+)", re.I | re.M)
COPY_MARKER = re.compile(
    r"(below this line is a copy of the message|this is a copy of the message|original message follows|"
    r"returned message follows|undelivered message follows|--- original message ---|"
    r"original message headers|message headers follow|------ ?this is a copy)", re.I)
QUOTE_HEADER_LINE = re.compile(
    r"^\s*(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"messaggio originale|oorspronkelijk bericht|originalmeddelande|original meddelelse|"
    r"alkuperäinen viesti|wiadomość oryginalna|původní zpráva|исходное сообщение)\s*-{2,}"
    r"|-{2,}\s*(forwarded message|weitergeleitete nachricht|message transféré)\s*-{2,}|_{20,}"
    r"|on\s.{1,250}\swrote:|am\s.{1,250}\sschrieb\s.{0,250}:|le\s.{1,250}\sa écrit\s?:"
    r"|el\s.{1,250}\sescribió:|il\s.{1,250}\sha scritto:|op\s.{1,250}\sschreef\s.{0,250}:"
    r"|den\s.{1,250}\sskrev\s.{0,250}:"
    r"|.{1,250}\s(wrote|schrieb|a écrit|escribió|ha scritto|schreef|skrev)\s?:)\s*$", re.I)
WRAPPED_ATTRIBUTION = re.compile(r"^\s*(on|am|le|el|il|op|den)\s.{1,250}$", re.I)
WROTE_ALONE = re.compile(r"^\s*.{0,250}(wrote|schrieb|a écrit|escribió|ha scritto|schreef|skrev)\s?:\s*$", re.I)
OUTLOOK_FROM = re.compile(r"^\s*\*?(from|von|de|da|van|från|fra|od|от)\s*:\*?\s*\S", re.I)
OUTLOOK_NEXT = re.compile(
    r"^\s*\*?(sent|date|to|subject|cc|gesendet|datum|an|betreff|envoyé|date|à|objet|enviado|para|"
    r"asunto|inviato|data|oggetto|verzonden|aan|onderwerp|skickat|till|ämne|sendt|til|emne|wysłano|"
    r"temat|отправлено|тема)\s*:\*?", re.I)
SIGNATURE_LINE = re.compile(
    r"^(--\s?|sent from my (iphone|ipad|android|samsung|galaxy|mobile|phone|blackberry|huawei|xiaomi).*"
    r"|sent from (outlook|mail) for (ios|android|windows).*|get outlook for (ios|android).*"
    r"|von meinem (iphone|ipad|smartphone|samsung).* gesendet|envoyé de mon (iphone|ipad|smartphone).*"
    r"|enviado desde mi (iphone|ipad|smartphone).*)\s*$", re.I)
SIGNATURE_STARTS = ("sent ", "get ", "von ", "envoy", "enviad")
FOOTER_MARKER = re.compile(r"\[\s*ref\s*:\s*([A-Za-z0-9_-]{1,64})\s*\.\s*([0-9a-f]{16})\s*\]", re.I)
REFERENCE_IN_TEXT = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9a-fA-F]{16})\b")
TICKET_SUBJECT = re.compile(r"\[Ticket#(?P<ticket>[A-Za-z0-9_-]+)\]")


def decode_text(payload: bytes, declared) -> str:
    """UTF-8 when valid, else the declared charset, else Windows-1252 (no sniffer in stdlib)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return payload.decode(declared)
        except (LookupError, UnicodeDecodeError):
            pass
    return payload.decode("cp1252", "replace")


class HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    p = HtmlText()
    p.feed(markup)
    p.close()
    lines = [line.rstrip() for line in "".join(p.out).splitlines()]
    out, blank = [], 0
    for line in lines:
        blank = blank + 1 if not line.strip() else 0
        if blank <= 1:
            out.append(line)
    return "\n".join(out).strip()


def verify_reference(reference: str):
    ticket, _, tag = reference.strip().rpartition(".")
    if not ticket or len(tag) != 16:
        return None
    want = hmac.new(THREAD_KEY, ticket.encode(), hashlib.sha256).hexdigest()[:16]
    return ticket if hmac.compare_digest(want, tag.lower()) else None


def classify(h, subject, from_addr, report_type, has_dsn, has_mdn):
    if from_addr and from_addr.lower() in OWN_ADDRESSES:
        return "loop"
    if any(o in h.get("x-loop", "").lower() for o in OWN_ADDRESSES):
        return "loop"
    if "x-mailbridge-ref" in h and verify_reference(h["x-mailbridge-ref"]):
        return "loop"
    if "x-rt-loop-prevention" in h:
        return "loop"
    if report_type:
        return "report"
    if FEEDBACK_SUBJECT.search(subject):
        return "feedback_report"
    if has_dsn:
        return "bounce"
    if has_mdn:
        return "read_receipt"
    if "x-failed-recipients" in h:
        return "bounce"
    local = (from_addr or "").rsplit("@", 1)[0].lower()
    if local in ("mailer-daemon", "postmaster", "mailer_daemon", "mail-daemon", "maildaemon"):
        return "bounce"
    null_sender = h.get("return-path", "x").strip("<> ") == ""
    if BOUNCE_SUBJECT.search(subject) and (null_sender or not from_addr or any(
            w in from_addr.lower() for w in ("daemon", "postmaster", "mailer", "bounce"))):
        return "bounce"
    auto = h.get("auto-submitted", "").lower()
    if "x-ms-exchange-inbox-rules-loop" in h and h.get("x-auto-response-suppress", "").lower() == "all":
        return "out_of_office"
    if "x-ms-exchange-generated-message-source" in h:
        return "out_of_office"
    if auto.startswith("auto-replied") and ("vacation" in auto or VACATION_WORDS.search(subject)):
        return "out_of_office"
    if AUTO_REPLY_SUBJECT.search(subject):
        return "out_of_office" if VACATION_WORDS.search(subject) else "auto_reply"
    for name in ("x-autoreply", "x-autorespond", "x-autoresponse", "x-autoreply-from",
                 "x-mail-autoreply", "x-autoresponder"):
        if name in h and h[name].lower() != "no":
            return "auto_reply"
    if auto and auto.strip() != "no":
        return "auto_reply" if auto.startswith("auto-replied") else "auto_generated"
    suppress = h.get("x-auto-response-suppress", "").lower().replace(",", " ").split()
    if "all" in suppress or "autoreply" in suppress:
        return "auto_generated"
    for name, value in (("x-autogenerated", "reply"), ("x-amazon-mail-relay-type", "notification"),
                        ("x-fc-machinegenerated", "true")):
        if h.get(name, "").lower() == value:
            return "auto_generated"
    if "x-amz-sns-message-id" in h or "x-loop" in h:
        return "auto_generated"
    if "list-id" in h:
        return "mailing_list"
    precedence = h.get("precedence", h.get("x-precedence", "")).strip().lower().split(";")[0]
    if precedence in ("bulk", "junk", "list", "auto_reply", "auto-reply"):
        return "bulk"
    if null_sender:
        return "auto_generated"
    if "list-unsubscribe" in h:
        return "bulk"
    return None


def bounce_details(msg, dsn_texts, returned_headers, body_text):
    recipient = status = None
    for dsn in dsn_texts:
        for line in dsn.splitlines():
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "final-recipient" and recipient is None:
                recipient = value.split(";")[-1].strip().strip("<>")
            elif name == "status" and status is None:
                m = STATUS_IN_TEXT.search(value)
                status = m.group(1) if m else None
    if recipient is None and msg.get("x-failed-recipients"):
        recipient = str(msg.get("x-failed-recipients")).split(",")[0].strip().strip("<>")
    m = COPY_MARKER.search(body_text)
    human, quoted = (body_text[:m.start()], body_text[m.end():]) if m else (body_text, None)
    if recipient is None:
        for m in ADDRESS_IN_TEXT.finditer(human):
            if not m.group(1).lower().startswith(("mailer-daemon", "postmaster")):
                recipient = m.group(1)
                break
    if status is None:
        m = STATUS_IN_TEXT.search(human)
        status = m.group(1) if m else None
    original = None
    for block in returned_headers + ([quoted] if quoted else []):
        m = MESSAGE_ID_LINE.search(block)
        if m:
            original = m.group(1).strip("<>")
            break
    return {"original_message_id": original, "recipient": recipient, "status": status}


def reply_text(body: str) -> str:
    lines = body.splitlines()
    end = len(lines)
    # Each regex only sees lines that pass a cheap necessary condition (as in reply.rs).
    for i, line in enumerate(lines):
        t = line.strip()
        if not t or t.startswith(">"):
            continue
        if (t.endswith(":") or t.startswith(("--", "__"))) and QUOTE_HEADER_LINE.search(line):
            end = i
            break
        nxt = lines[i + 1] if i + 1 < len(lines) else None
        if (nxt is not None and nxt.rstrip().endswith(":") and WROTE_ALONE.search(nxt)
                and WRAPPED_ATTRIBUTION.search(line)):
            end = i
            break
        if ":" in t and OUTLOOK_FROM.search(line) and sum(
                1 for l in lines[i + 1:i + 7] if OUTLOOK_NEXT.search(l)) >= 2:
            end = i
            break
        if (t.startswith("--") or t[:8].casefold().startswith(SIGNATURE_STARTS)) \
                and SIGNATURE_LINE.search(line):
            end = i
            break
    kept = [l for l in lines[:end] if not l.lstrip().startswith(">")]
    text = "\n".join(kept).strip()
    return text or body


def work_full(raw: bytes) -> dict:
    """compat32 parse plus everything else the Rust parser does for a ticket draft."""
    msg = email.message_from_bytes(raw)
    draft = work_compat32_message(msg, full=True)
    text = "\n\n".join(t.strip() for t in draft["text"] if t.strip())
    if not text and draft["html"]:
        text = html_to_text(draft["html"])
    from_addr = draft["from"][0][1] if draft["from"] else None
    root_type = msg.get_content_type()
    report_type = msg.get_param("report-type") if root_type == "multipart/report" else None
    kinds = [a[1] for a in draft["attachments"]]
    # Every header field once, by lower-cased name (classify and the auto list read this).
    h = {k.lower(): str(v) for k, v in msg.items()}
    draft["auto"] = [(name, h[name]) for name in AUTO_HEADERS if name in h]
    reason = classify(h, draft["subject"], from_addr, report_type,
                      "message/delivery-status" in kinds,
                      "message/disposition-notification" in kinds)
    bounce = None
    if reason == "bounce" or (report_type or "").endswith("delivery-status"):
        bounce = bounce_details(msg, draft["dsn"], draft["returned"], text)
    ticket = None
    for carrier in [str(msg.get("x-mailbridge-ref", ""))]:
        ticket = ticket or (verify_reference(carrier) if carrier else None)
    for source in (text, draft["html"] or ""):
        for m in FOOTER_MARKER.finditer(source):
            ticket = ticket or verify_reference(f"{m.group(1)}.{m.group(2)}")
    for ref in [draft["in_reply_to"]] + draft["references"][::-1] + draft["returned"]:
        for m in REFERENCE_IN_TEXT.finditer(ref or ""):
            ticket = ticket or verify_reference(f"{m.group(1)}.{m.group(2)}")
    if ticket is None:
        m = TICKET_SUBJECT.search(draft["subject"])
        ticket = m.group("ticket") if m else None
    draft.update(body_text=text, reply_text=reply_text(text), auto_reason=reason,
                 bounce=bounce, ticket=ticket)
    return draft


def load(dirs):
    """(path, bytes) of every non-empty .eml (or extension-less file) of the directories."""
    mails = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if os.path.isfile(path) and (name.endswith(".eml") or "." not in name):
                with open(path, "rb") as f:
                    raw = f.read()
                if raw:
                    mails.append((path, raw))
    return mails


def main(argv):
    min_seconds = 3.0
    policy = "compat32"
    work_kind = "parse"
    per_mail = False
    args = argv[1:]
    while args and args[0].startswith("--"):
        if args[0] == "--per-mail":
            per_mail = True
            args = args[1:]
            continue
        if args[0] == "--min-seconds" and len(args) > 1:
            min_seconds = float(args[1])
        elif args[0] == "--policy" and len(args) > 1:
            policy = args[1]
        elif args[0] == "--work" and len(args) > 1:
            work_kind = args[1]
        else:
            print(__doc__, file=sys.stderr)
            return 2
        args = args[2:]
    if work_kind == "full":
        work = work_full
    else:
        work = work_compat32 if policy == "compat32" else work_default
    dirs = args
    if not dirs:
        print(__doc__, file=sys.stderr)
        return 2
    if per_mail:
        for path, raw in load(dirs):
            n, start = 0, time.perf_counter()
            while n < 5 or time.perf_counter() - start < 0.05:
                try:
                    work(raw)
                except Exception:
                    pass
                n += 1
            print(f"{(time.perf_counter() - start) * 1e6 / n:.1f} {len(raw)} {path}")
        return 0
    mails = [raw for _, raw in load(dirs)]
    total = sum(len(m) for m in mails)
    errors = 0
    for raw in mails:  # warm-up, and count failures once
        try:
            work(raw)
        except Exception:
            errors += 1
    iterations = 0
    start = time.perf_counter()
    cpu_start = time.thread_time()
    while True:
        for raw in mails:
            try:
                work(raw)
            except Exception:
                pass
        iterations += 1
        elapsed = time.thread_time() - cpu_start
        if elapsed >= min_seconds:
            break
    wall = time.perf_counter() - start
    print(json.dumps({
        "files": len(mails), "bytes": total, "iterations": iterations,
        "seconds": elapsed, "wall_seconds": wall,
        "mb_per_s": total * iterations / elapsed / 1e6,
        "mails_per_s": len(mails) * iterations / elapsed,
        "wall_mb_per_s": total * iterations / wall / 1e6,
        "errors": errors, "policy": policy, "work": work_kind,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
