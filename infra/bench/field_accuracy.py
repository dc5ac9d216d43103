#!/usr/bin/env python3
"""Per-field accuracy of three mail extractors against a hand-written truth set.

Usage: field_accuracy.py [--mailbridge PATH] [--misses] [--only rust|bare|careful] [TRUTH.json...]

TRUTH defaults to tests/fixtures/fidelity/truth.json, holdout.json and holdout3.json (paths inside are relative
to the file's folder); the table is over all of them, with one overall line per file after it.
The extractors:
  rust     `mailbridge parse FILE` (the operator CLI; --mailbridge, default: target/debug/mailbridge
           under $CARGO_TARGET_DIR or ./target)
  bare     Python's `email` package used the obvious way (compat32 message_from_bytes,
           get_payload(decode=True).decode(charset), email.header.decode_header, get_filename())
  careful  the same package with the repairs a careful integration adds (see `careful()`):
           charset aliases and sniffing, cp1252 for latin-1 labels, own RFC 2047 decoding (joined
           adjacent words, words in quoted strings, raw 8-bit headers), junk/mbox lines and broken
           folding repaired before parsing, base64 padding repair, html.parser HTML -> text, and the
           machine-mail/bounce rules of parse_python.py's --work full.
Prints per-field and overall accuracy for each extractor and, with --misses, every miss (mail,
field, expected, got). Stdlib only. The comparison rules are in `check()` and in
tests/fixtures/fidelity/README.md; shared/tests/fidelity.rs applies the same rules to the Rust
parser in `cargo test`.
"""
import base64
import binascii
import datetime
import email
import email.header
import email.utils
import html
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parse_python  # noqa: E402  (the --work full extractor of the throughput bench)

FIELDS = ["mid", "subject", "from_name", "from_addr", "to", "cc", "date", "irt", "refs", "body", "att",
          "auto", "auto_class", "b_rcpt", "b_status"]
TAG = re.compile(r"</?(html|head|body|div|p|br|span|table|tr|td|a|img|font|style|script|meta|b|i|o:p)\b[^>]*>", re.I)
MOJIBAKE = ("\ufffd", "Ã", "â€", "\x1b", "ã\x81", "ã\x83")


# ---------------------------------------------------------------- comparison
def norm_text(s):
    return re.sub(r"\s+", " ", (s or "").replace("\u00a0", " ")).strip()


def norm_id(s):
    if s is None:
        return None
    s = s.strip().strip("<>").strip()
    return s or None


def same_date(expected, got):
    if expected is None or got is None:
        return expected == got
    try:
        a = datetime.datetime.fromisoformat(expected)
        b = datetime.datetime.fromisoformat(got.replace("Z", "+00:00"))
    except ValueError:
        return False
    return a == b and a.utcoffset() == b.utcoffset()


def check(field, expected, got, truth):
    """True when `got` (the extractor's value) matches the truth for `field`."""
    if field in ("mid", "irt"):
        return norm_id(expected) == norm_id(got)
    if field == "refs":
        return [norm_id(x) for x in expected] == [norm_id(x) for x in (got or [])]
    if field in ("subject", "from_name"):
        if expected is None:
            return not got
        return norm_text(expected) == norm_text(got)
    if field == "from_addr":
        return (expected or "").lower() == (got or "").lower()
    if field in ("to", "cc"):
        return [x.lower() for x in expected] == [x.lower() for x in (got or [])]
    if field == "date":
        return same_date(expected, got)
    if field == "body":
        text = norm_text(got)
        if any(m in (got or "") for m in MOJIBAKE):
            return False
        if TAG.search(got or "") and not truth.get("body_quotes_markup"):
            return False
        if any(norm_text(n) in text for n in truth.get("body_not", [])):
            return False
        return all(norm_text(p) in text for p in expected)
    if field == "att":
        got = got or []
        if len(got) != len(expected):
            return False
        for (efn, ect, esize), (gfn, gct, gsize) in zip(expected, got):
            if efn != gfn or ect.lower() != (gct or "").lower():
                return False
            if esize is not None and esize != gsize:
                return False
        return True
    if field == "auto":
        return bool(got) == expected
    if field == "auto_class":
        return got in expected
    if field == "b_rcpt":
        options = expected if isinstance(expected, list) else [expected]
        return (got or "").lower() in [o.lower() for o in options]
    if field == "b_status":
        return expected == got
    raise ValueError(field)


# ---------------------------------------------------------------- extractor: Rust
def rust(path, binary):
    out = subprocess.run([binary, "parse", path], capture_output=True)
    if out.returncode != 0:
        return {"error": out.stderr.decode("utf-8", "replace").strip()}
    d = json.loads(out.stdout)
    reason = d.get("auto_reason")
    bounce = d.get("bounce") or {}
    return {
        "mid": d["message_id"], "subject": d["subject"],
        "from_name": (d["from"] or {}).get("name"), "from_addr": (d["from"] or {}).get("address"),
        "to": [a["address"] for a in d["to"]], "cc": [a["address"] for a in d["cc"]],
        "date": d["date"], "irt": d["in_reply_to"], "refs": d["references"], "body": d["body_text"],
        "att": [[a["filename"], a["content_type"], a["size"]] for a in d["attachments"]],
        "auto": d["auto_generated"], "auto_class": reason.split(":", 1)[0] if reason else None,
        "b_rcpt": bounce.get("recipient"), "b_status": bounce.get("status"),
    }


# ---------------------------------------------------------------- extractor: Python bare
def bare_header(value):
    if value is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (UnicodeDecodeError, LookupError):  # a wrong charset: keep the field as written
        return str(value)


def bare(path):
    with open(path, "rb") as f:
        msg = email.message_from_bytes(f.read())
    name, addr = email.utils.parseaddr(str(msg.get("from", "")))
    date = None
    if msg.get("date"):
        try:
            date = email.utils.parsedate_to_datetime(str(msg["date"])).isoformat()
        except (TypeError, ValueError):
            pass
    texts, html_body, atts, dsn = [], None, [], []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            dsn.extend(b for b in part.get_payload() if hasattr(b, "get"))
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = part.get_filename()
        disposition = part.get_content_disposition()
        if ctype in ("text/plain", "text/html") and not filename and disposition != "attachment" and (
                ctype == "text/plain" or html_body is None):
            payload = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "us-ascii"
            try:
                text = payload.decode(charset, "replace")
            except LookupError:
                text = payload.decode("latin-1")
            if ctype == "text/plain":
                texts.append(text)
            else:
                html_body = text
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else None
        atts.append([bare_header(filename) if filename else None, ctype, size])
    h = {k.lower(): str(v) for k, v in msg.items()}
    report = msg.get_param("report-type") if msg.get_content_type() == "multipart/report" else None
    local = addr.split("@")[0].lower()
    auto_submitted = h.get("auto-submitted", "no").lower()
    cls = None
    if report:
        cls = {"delivery-status": "bounce", "feedback-report": "feedback_report",
               "disposition-notification": "read_receipt"}.get(str(report).lower(), "auto_generated")
    elif local in ("mailer-daemon", "postmaster"):
        cls = "bounce"
    elif auto_submitted != "no":
        cls = "auto_reply" if auto_submitted.startswith("auto-replied") else "auto_generated"
    elif "list-id" in h:
        cls = "mailing_list"
    elif h.get("precedence", "").lower() in ("bulk", "junk", "list"):
        cls = "bulk"
    rcpt = status = None
    for block in dsn:
        if rcpt is None and block.get("final-recipient"):
            rcpt = block["final-recipient"].split(";")[-1].strip()
        if status is None and block.get("status"):
            status = block["status"].split()[0]
    if rcpt is None and h.get("x-failed-recipients"):
        rcpt = h["x-failed-recipients"].split(",")[0].strip()
    return {
        "mid": msg.get("message-id"), "subject": bare_header(msg.get("subject")) or "",
        "from_name": bare_header(name) if name else None, "from_addr": addr or None,
        "to": [a for _, a in email.utils.getaddresses(msg.get_all("to", [])) if a],
        "cc": [a for _, a in email.utils.getaddresses(msg.get_all("cc", [])) if a],
        "date": date, "irt": msg.get("in-reply-to"), "refs": str(msg.get("references", "")).split(),
        "body": "\n".join(texts) if texts else (html_body or ""), "att": atts,
        "auto": cls is not None, "auto_class": cls, "b_rcpt": rcpt, "b_status": status,
    }


# ---------------------------------------------------------------- extractor: Python careful
ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
           "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
           "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "windows-31j": "cp932",
           "unicode-1-1-utf-7": "utf-7", "iso-2022-jp": "iso2022_jp_ext", "cp-850": "cp850", "x-unknown": "utf-8"}


def jis_to_cp932(data):
    """ISO-2022-JP as Windows writes it (CP50220: NEC row 13, IBM extensions) has no stdlib
    codec: convert each JIS X 0208 pair to Shift_JIS and decode as cp932."""
    out, i, double = bytearray(), 0, False
    while i < len(data):
        if data[i] == 0x1B and data[i + 1:i + 3] in (b"$B", b"$@"):
            double, i = True, i + 3
            continue
        if data[i] == 0x1B and data[i + 1:i + 3] in (b"(B", b"(J"):
            double, i = False, i + 3
            continue
        if double and data[i] > 0x20 and i + 1 < len(data):
            j1, j2 = data[i], data[i + 1]
            s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
            s2 = j2 + (0x1F if j1 % 2 else 0x7E) + (1 if j1 % 2 and j2 >= 0x60 else 0)
            out += bytes([s1, s2])
            i += 2
            continue
        out.append(data[i])
        i += 1
    return bytes(out).decode("cp932", "replace")


def sniff(data):
    """A small stdlib charset sniffer for undeclared or mislabelled 8-bit text."""
    if b"\x1b$B" in data or b"\x1b$@" in data:
        for cs in ("iso2022_jp", "iso2022_jp_ext"):
            try:
                return data.decode(cs)
            except UnicodeDecodeError:
                pass
        return jis_to_cp932(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    high = [b for b in data if b >= 0x80]
    western = data.decode("cp1252", "replace")
    if all(c.isalpha() or c in "–—„“”‘’…€°§«»·" for c in western if ord(c) >= 0x80):
        return western
    paired = sum(1 for i, b in enumerate(data) if b >= 0x80 and (
        (i > 0 and data[i - 1] >= 0x80) or (i + 1 < len(data) and data[i + 1] >= 0x80)))
    for cs in () if paired < 0.8 * len(high) else ("euc_jp", "cp932", "gb18030"):
        try:
            text = data.decode(cs)
        except UnicodeDecodeError:
            continue
        cjk = sum(1 for c in text if "\u3040" <= c <= "\u9fff")
        if high and cjk * 2 >= len(high) * 0.8:
            return text
    # Cyrillic single-byte: KOI8-R puts lower-case letters at 0xC0-0xDF, cp1251 at 0xE0-0xFF
    if high and sum(1 for b in high if b >= 0xC0) > 0.8 * len(high):
        koi = data.decode("koi8_r")
        if sum(1 for c in koi if "\u0430" <= c <= "\u044f") > sum(1 for c in koi if "\u0410" <= c <= "\u042f"):
            return koi
    return data.decode("cp1252", "replace")


def careful_decode(data, declared):
    declared = (declared or "").strip().strip('"').lower()
    if b"\x1b" in data or declared.startswith("iso-2022-jp"):
        return sniff(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared and declared not in ("us-ascii", "ascii", "utf-8", "utf8"):
        cs = ALIASES.get(declared, declared)
        try:
            text = data.decode(cs)
            if cs == "cp1252" or not any("\x80" <= c <= "\x9f" for c in text):
                return text
        except (LookupError, UnicodeDecodeError):
            pass
    return sniff(data)


ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def decode_words(value):
    """RFC 2047 decoding that also joins adjacent words written without a blank, decodes words
    inside quoted strings, joins bytes of adjacent same-charset words before decoding, and
    decodes raw 8-bit header bytes (surrogate-escaped by compat32)."""
    if value is None:
        return None
    value = str(value)
    try:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError:
        value = sniff(value.encode("utf-8", "surrogateescape"))
    value = re.sub(r"\r?\n[ \t]", " ", value)
    out, pending, pending_cs, pos = [], b"", None, 0

    def flush():
        nonlocal pending, pending_cs
        if pending_cs is not None:
            out.append(careful_decode(pending, pending_cs.split("*")[0]))
        pending, pending_cs = b"", None

    for m in ENCODED_WORD.finditer(value):
        between = value[pos:m.start()]
        if between.strip() or pending_cs is None:
            flush()
            out.append(between)
        cs, enc, text = m.group(1), m.group(2).upper(), m.group(3)
        if enc == "B":
            text = re.sub(r"[^A-Za-z0-9+/]", "", text)
            data = base64.b64decode(text + "=" * (-len(text) % 4)) if len(text) % 4 != 1 else base64.b64decode(text[:-1] + "=" * (-len(text[:-1]) % 4))
        else:
            data = re.sub(rb"=([0-9A-Fa-f]{2})", lambda x: bytes([int(x.group(1), 16)]), text.replace("_", " ").encode("latin-1", "replace"))
        if pending_cs is not None and pending_cs.lower() != cs.lower():
            flush()
        pending_cs = cs
        pending += data
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")


def repair_raw(raw):
    """Drops a BOM, blank lines, mbox 'From '/'>From ' lines and their stray continuations before
    the first header, and joins header lines that lost their folding whitespace."""
    raw = raw.replace(b"\r\n", b"\n")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((b"From ", b">From "))):
        i += 1
    if i < len(lines) and lines[i][:1] in (b" ", b"\t") and HEADER_LINE.match(lines[i].lstrip()):
        lines[i] = lines[i].lstrip()  # a header folded onto the mbox line
    out = []
    for j in range(i, len(lines)):
        line = lines[j]
        if not line.strip():
            out.extend(lines[j:])
            break
        if out and not HEADER_LINE.match(line) and line[:1] not in (b" ", b"\t"):
            out.append(b" " + line)  # broken folding: a continuation without leading whitespace
        else:
            out.append(line)
    return b"\n".join(out)


def careful_payload(part):
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64" and not part.is_multipart():
        raw = part.get_payload(decode=False)
        if isinstance(raw, str):
            data = re.sub(r"[^A-Za-z0-9+/]", "", raw)
            if len(data) % 4 == 1:
                data = data[:-1]
            try:
                return base64.b64decode(data + "=" * (-len(data) % 4))
            except binascii.Error:
                pass
    return part.get_payload(decode=True)


def html_charset(data):
    m = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_-]+)", data[:2048], re.I)
    return m.group(1).decode() if m else None


def leaves(part):
    """MIME leaves in order, not opening message/* parts (a forwarded mail is one attachment)."""
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        for sub in part.get_payload():
            yield from leaves(sub)
    else:
        yield part


def raw_header(msg, name):
    """The header value as sent: compat32 turns 8-bit values into U+FFFD via Header objects."""
    for k, v in msg._headers:  # noqa: SLF001 (the raw, surrogate-escaped value)
        if k.lower() == name:
            return v
    return None


def raw_headers(msg, name):
    return [v for k, v in msg._headers if k.lower() == name]  # noqa: SLF001


def careful(path):
    with open(path, "rb") as f:
        raw = repair_raw(f.read())
    msg = email.message_from_bytes(raw)
    froms = [(decode_words(n), a) for n, a in email.utils.getaddresses(raw_headers(msg, "from")) if "@" in a]
    date = None
    if msg.get("date"):
        try:
            dt = email.utils.parsedate_to_datetime(str(msg["date"]))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=datetime.timezone.utc)
            date = dt.isoformat()
        except (TypeError, ValueError):
            pass
    texts, html_body, atts, dsn, returned = [], None, [], [], []
    for part in leaves(msg):
        ctype = part.get_content_type()
        filename = part.get_filename()
        if filename and "\ufffd" in filename:  # raw 8-bit parameter: read it from the raw header
            for field in ("content-disposition", "content-type"):
                m = re.search(r'(?:file)?name="([^"]*)"', raw_header(part, field) or "")
                if m:
                    filename = m.group(1)
                    break
        if filename:
            filename = decode_words(filename)
        disposition = part.get_content_disposition()
        if ctype.startswith("message/") or ctype == "text/rfc822-headers":
            inner = part.get_payload()
            if ctype == "message/delivery-status" and isinstance(inner, list):
                dsn.append("\n".join("\n".join(f"{k}: {v}" for k, v in b.items()) for b in inner))
            elif isinstance(inner, list) and inner:
                returned.append("\n".join(f"{k}: {v}" for k, v in inner[0].items()))
            elif isinstance(inner, str):
                returned.append(inner.split("\n\n", 1)[0])
            if not filename and ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
                # The contract: a returned or forwarded message is named after its subject.
                head = inner[0] if isinstance(inner, list) and inner else email.message_from_string(
                    (inner or "").split("\n\n", 1)[0] + "\n\n") if isinstance(inner, str) else None
                subject = " ".join(decode_words(str((head or {}).get("subject") or "")).split())
                filename = subject.replace("/", "_").replace("\\", "_") + ".eml" if subject else None
            atts.append([filename or None, ctype, None])
            continue
        payload = careful_payload(part)
        if ctype in ("text/plain", "text/html") and not filename and disposition != "attachment":
            data = payload or b""
            declared = part.get_content_charset() or (html_charset(data) if ctype == "text/html" else None)
            text = careful_decode(data, declared).replace("\r\n", "\n")
            if ctype == "text/plain":
                texts.append(text)
                continue
            if html_body is None:
                html_body = text
                continue
        atts.append([filename or None, ctype, len(payload) if isinstance(payload, bytes) else None])
    body = "\n\n".join(t.strip() for t in texts if t.strip())
    if not body and html_body:
        body = html.unescape(parse_python.html_to_text(html_body))
    subject = decode_words(raw_header(msg, "subject")) or ""
    from_addr = froms[0][1] if froms else None
    report = str(msg.get_param("report-type") or "").lower() if msg.get_content_type() == "multipart/report" else None
    kinds = [a[1] for a in atts]
    reason = parse_python.classify(msg, subject, from_addr, report, "message/delivery-status" in kinds,
                                   "message/disposition-notification" in kinds)
    if reason == "report":
        reason = {"delivery-status": "bounce", "feedback-report": "feedback_report",
                  "disposition-notification": "read_receipt"}.get(report, "delivery_report")
    bounce = {}
    if reason == "bounce":
        bounce = parse_python.bounce_details(msg, dsn, returned, body)
    ids = lambda v: re.findall(r"<([^<>\s]+)>", str(v or "")) or str(v or "").split()  # noqa: E731
    irt = ids(msg.get("in-reply-to"))
    return {
        "mid": (ids(msg.get("message-id")) or [None])[0], "subject": subject,
        "from_name": (froms[0][0] or None) if froms else None, "from_addr": from_addr,
        "to": [a for _, a in email.utils.getaddresses(raw_headers(msg, "to")) if "@" in a],
        "cc": [a for _, a in email.utils.getaddresses(raw_headers(msg, "cc")) if "@" in a],
        "date": date, "irt": irt[0] if irt else None, "refs": ids(msg.get("references")),
        "body": body, "att": atts, "auto": reason is not None, "auto_class": reason,
        "b_rcpt": bounce.get("recipient"), "b_status": bounce.get("status"),
    }


# ---------------------------------------------------------------- driver
def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.getcwd(), "target"))
    return os.path.join(target, "debug", "mailbridge")


def main(argv):
    binary, show_misses, only, truth_paths = default_binary(), False, None, []
    args = argv[1:]
    while args:
        a = args.pop(0)
        if a == "--mailbridge":
            binary = args.pop(0)
        elif a == "--misses":
            show_misses = True
        elif a == "--only":
            only = args.pop(0)
        elif a.startswith("-"):
            print(__doc__, file=sys.stderr)
            return 2
        else:
            truth_paths.append(a)
    if not truth_paths:
        truth_paths = ["tests/fixtures/fidelity/truth.json", "tests/fixtures/fidelity/holdout.json",
                       "tests/fixtures/fidelity/holdout3.json"]
    truth = []
    for truth_path in truth_paths:
        with open(truth_path, encoding="utf-8") as f:
            for t in json.load(f):
                t["_root"] = os.path.dirname(os.path.abspath(truth_path))
                t["_set"] = os.path.basename(truth_path)
                truth.append(t)
    extractors = {"rust": lambda p: rust(p, binary), "bare": bare, "careful": careful}
    if only:
        extractors = {only: extractors[only]}
    results = {}
    for name, extract in extractors.items():
        per_field = {f: [0, 0] for f in FIELDS}
        per_set = {}
        misses = []
        for t in truth:
            path = os.path.join(t["_root"], t["file"])
            try:
                got = extract(path)
            except Exception as e:  # an extractor that crashes gets every field wrong
                got = {"error": f"{type(e).__name__}: {e}"}
            for field in FIELDS:
                if field not in t:
                    continue
                value = got.get(field)
                ok = "error" not in got and check(field, t[field], value, t)
                per_field[field][1] += 1
                per_field[field][0] += ok
                counts = per_set.setdefault(t["_set"], [0, 0])
                counts[0] += ok
                counts[1] += 1
                if not ok:
                    misses.append((t["file"], field, t[field], got.get("error") or value))
        results[name] = (per_field, misses, per_set)
    names = list(results)
    print(f"truth: {', '.join(truth_paths)} ({len(truth)} mails)")
    print("| field | checks | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for field in FIELDS:
        total = results[names[0]][0][field][1]
        if not total:
            continue
        cells = [f"{results[n][0][field][0]}/{total} ({100 * results[n][0][field][0] / total:.1f} %)" for n in names]
        print(f"| {field} | {total} | " + " | ".join(cells) + " |")
    overall = []
    for n in names:
        ok = sum(v[0] for v in results[n][0].values())
        total = sum(v[1] for v in results[n][0].values())
        overall.append(f"**{ok}/{total} ({100 * ok / total:.1f} %)**")
    print(f"| **all** | {total} | " + " | ".join(overall) + " |")
    if len(truth_paths) > 1:
        for set_name in results[names[0]][2]:
            cells = []
            for n in names:
                ok, total = results[n][2][set_name]
                cells.append(f"{ok}/{total} ({100 * ok / total:.1f} %)")
            print(f"| all of {set_name} | {total} | " + " | ".join(cells) + " |")
    if show_misses:
        for n in names:
            misses = results[n][1]
            print(f"\n## misses: {n} ({len(misses)})")
            for file, field, expected, got in misses:
                g = got if not isinstance(got, str) or len(got) < 300 else got[:300] + "..."
                print(f"- {file} {field}: expected {json.dumps(expected, ensure_ascii=False)} got {json.dumps(g, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
