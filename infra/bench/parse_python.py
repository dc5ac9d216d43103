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

Usage: parse_python.py [--min-seconds S] [--policy compat32|default] DIR [DIR ...]
(compat32, the default, is the faster API; the comparison uses the faster one.)
"""
import email
import email.header
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
    msg = email.message_from_bytes(raw)
    draft = {
        "subject": decode_header(msg.get("subject")),
        "message_id": str(msg.get("message-id", "") or ""),
        "in_reply_to": str(msg.get("in-reply-to", "") or ""),
        "references": str(msg.get("references", "") or "").split(),
        "date": None,
        "from": [], "to": [], "cc": [], "reply_to": [],
        "text": [], "html": None, "attachments": [], "auto": [],
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
            draft["text"].append(text_of(part))
        elif ctype == "text/html" and disposition != "attachment" and draft["html"] is None:
            draft["html"] = text_of(part)
        else:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, (bytes, bytearray)) else len(str(part.get_payload()))
            draft["attachments"].append((filename, ctype, size, part.get("content-id")))
    for name in AUTO_HEADERS:
        value = msg.get(name)
        if value is not None:
            draft["auto"].append((name, str(value)))
    return draft


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


def load(dirs):
    mails = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if os.path.isfile(path) and (name.endswith(".eml") or "." not in name):
                with open(path, "rb") as f:
                    raw = f.read()
                if raw:
                    mails.append(raw)
    return mails


def main(argv):
    min_seconds = 3.0
    policy = "compat32"
    args = argv[1:]
    while args and args[0].startswith("--"):
        if args[0] == "--min-seconds" and len(args) > 1:
            min_seconds = float(args[1])
        elif args[0] == "--policy" and len(args) > 1:
            policy = args[1]
        else:
            print(__doc__, file=sys.stderr)
            return 2
        args = args[2:]
    work = work_compat32 if policy == "compat32" else work_default
    dirs = args
    if not dirs:
        print(__doc__, file=sys.stderr)
        return 2
    mails = load(dirs)
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
        "errors": errors, "policy": policy,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
