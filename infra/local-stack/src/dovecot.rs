//! A throwaway Dovecot instance: generated config, CA and server cert, IMAPS on a free port,
//! oauth2 passdb pointed at the identity stand-in's introspection endpoint.

use std::path::{Path, PathBuf};

/// A running Dovecot instance (being built: start() fails for now).
#[derive(Debug)]
pub struct Dovecot {
    /// IMAPS port on 127.0.0.1 (server name `localhost`).
    pub imaps_port: u16,
    /// Plain IMAP port on 127.0.0.1.
    pub imap_port: u16,
    /// PEM of the CA that signed the server certificate (trust it explicitly).
    pub ca_pem_path: PathBuf,
}

impl Dovecot {
    /// Start an instance in `run_dir` validating tokens at `introspection_url`.
    pub async fn start(run_dir: &Path, introspection_url: &str) -> anyhow::Result<Dovecot> {
        let _ = (run_dir, introspection_url);
        anyhow::bail!("dovecot harness not built yet")
    }

    /// Short description for logs: ports and CA path.
    pub fn describe(&self) -> String {
        format!(
            "imaps://localhost:{} (imap {}), CA {}",
            self.imaps_port,
            self.imap_port,
            self.ca_pem_path.display()
        )
    }
}

impl crate::MailDrop for Dovecot {
    fn deliver(&self, recipient: &str, raw: &[u8]) -> anyhow::Result<()> {
        let _ = (recipient, raw);
        anyhow::bail!("dovecot harness not built yet")
    }
}
