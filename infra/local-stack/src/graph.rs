//! Microsoft Graph stand-in: `POST /v1.0/me/sendMail` and `/v1.0/users/{id}/sendMail`.
