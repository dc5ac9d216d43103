//! Microsoft Graph `sendMail` client (the mail sender adapter).
