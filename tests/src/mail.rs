//! Customer mail as the tests deliver it into a helpdesk mailbox: from Ann at
//! `customer.example`, Message-ID `<{id}@customer.example>`, CRLF line ends.

use base64::Engine as _;

/// The mailbox address customer mail is sent to unless a test names another.
pub const HELPDESK: &str = "helpdesk@example.com";

/// A plain-text mail from Ann to [`HELPDESK`].
pub fn customer_mail(id: &str, subject: &str, body: &str) -> Vec<u8> {
    customer_mail_with_attachments(HELPDESK, id, subject, body, &[])
}

/// A mail from Ann to `to`: the text `body`, and when there are `attachments` (file name,
/// content type, bytes) a `multipart/mixed` with each one base64-encoded.
pub fn customer_mail_with_attachments(
    to: &str,
    id: &str,
    subject: &str,
    body: &str,
    attachments: &[(&str, &str, &[u8])],
) -> Vec<u8> {
    let mut mail = format!(
        "From: Ann Example <ann@customer.example>\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\n"
    );
    let text = format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n");
    if attachments.is_empty() {
        mail.push_str(&text);
        return mail.into_bytes();
    }
    mail.push_str("Content-Type: multipart/mixed; boundary=b0\r\n\r\n--b0\r\n");
    mail.push_str(&text);
    for (name, content_type, bytes) in attachments {
        mail.push_str(&format!(
            "--b0\r\nContent-Type: {content_type}; name=\"{name}\"\r\nContent-Disposition: attachment; \
             filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ));
    }
    mail.push_str("--b0--\r\n");
    mail.into_bytes()
}
