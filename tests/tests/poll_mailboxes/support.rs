//! What the poller tests share beyond `mailbridge_tests::poller`: the mails they deliver and how
//! they read a report.

use super::*;

pub(crate) use mailbridge_tests::mail::customer_mail as mail;

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
