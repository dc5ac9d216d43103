//! What the poller tests share beyond `mailbridge_tests::poller`: the mails they deliver and how
//! they read a report.

use super::*;

pub(crate) fn mail(id: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

pub(crate) fn status<'a>(report: &'a poll_mailboxes::PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

pub(crate) fn corpus_mail(name: &str) -> Vec<u8> {
    let path = local_stack::repo_root()
        .join("tests/fixtures/mail")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
