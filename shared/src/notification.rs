//! The notification queue message: the public contract of send-notifications, and its validation.
