//! The DynamoDB state table: idempotency records for notifications, dedupe records for mail.
