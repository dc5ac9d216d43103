//! Lambda Runtime API emulator: runs a real `bootstrap` binary and hands it events.
