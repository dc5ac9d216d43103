//! poll-mailboxes: the logic, in plain async code behind the shared library's ports. `main.rs` is only Lambda glue.
