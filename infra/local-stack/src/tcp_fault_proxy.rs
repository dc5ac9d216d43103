//! A TCP proxy that cuts a connection at a chosen point, for IMAP over TLS (the bytes pass
//! through untouched, so the client still verifies Dovecot's certificate).
//!
//! It cannot read the encrypted commands, so a cut point is described by what it can see:
//! how many bytes the server has sent on this connection, and the client's writes after that.
//! With a large mail first in the folder this pins the IMAP step down exactly:
//!
//! - [`CutRule::ServerSent`]: cut both directions as soon as the server has sent `bytes` on the
//!   connection: with `bytes` inside the big mail's `FETCH` response, the connection dies
//!   mid-FETCH.
//! - [`CutRule::ClientWriteAfterServerSent`]: once the server has sent `bytes` (the big mail's
//!   whole `FETCH` response), the client's next write is the after-action (`UID MOVE`: between
//!   the fetch and the move the poller talks only to the ticket API and DynamoDB). Either cut
//!   before it reaches the server (`forward: false`: the MOVE never happened), or forward it,
//!   swallow the server's answer and then cut (`forward: true`: the MOVE happened but the
//!   client never saw the OK).
//!
//! A rule is armed for the next connection that reaches its point and then disarms itself, so
//! the next poll run passes. Each proxy forwards to one upstream and is owned by one test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Where to cut the next connection that gets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutRule {
    /// Cut once the server has sent this many bytes on the connection.
    ServerSent {
        /// Server → client byte count that triggers the cut.
        bytes: u64,
    },
    /// Once the server has sent this many bytes, cut at the client's next write.
    ClientWriteAfterServerSent {
        /// Server → client byte count after which the next client write is the cut point.
        bytes: u64,
        /// Forward that write and swallow the server's answer before cutting.
        forward: bool,
    },
}

/// What the proxy did (for assertions and diagnostics).
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u32,
    /// Connections cut by a rule, with a description of the point.
    pub cuts: Vec<String>,
}

#[derive(Default)]
struct Shared {
    rule: Option<CutRule>,
    stats: ProxyStats,
}

/// The running proxy (serves until the process ends).
pub struct TcpFaultProxy {
    /// The port to connect to (127.0.0.1).
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl TcpFaultProxy {
    /// Listen on a free 127.0.0.1 port and forward each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpFaultProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_shared.lock().expect("proxy lock").stats.connections += 1;
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pump(client, server, shared).await;
                    }
                });
            }
        });
        Ok(TcpFaultProxy { port, shared })
    }

    /// Arm `rule` for the next connection that reaches it (replaces an armed rule).
    pub fn arm(&self, rule: CutRule) {
        self.shared.lock().expect("proxy lock").rule = Some(rule);
    }

    /// Whether a rule is still armed (it has not fired yet).
    pub fn armed(&self) -> bool {
        self.shared.lock().expect("proxy lock").rule.is_some()
    }

    /// What happened so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.lock().expect("proxy lock").stats.clone()
    }
}

/// Take the armed rule if `fires` says this connection reached it.
fn take_rule_if(shared: &Mutex<Shared>, fires: impl FnOnce(CutRule) -> bool) -> Option<CutRule> {
    let mut shared = shared.lock().expect("proxy lock");
    match shared.rule {
        Some(rule) if fires(rule) => shared.rule.take(),
        _ => None,
    }
}

fn record_cut(shared: &Mutex<Shared>, what: String) {
    tracing::info!(cut = %what, "tcp fault proxy: connection cut");
    shared.lock().expect("proxy lock").stats.cuts.push(what);
}

/// After a forwarded client write: keep forwarding the client's writes (a command may span
/// several TLS records) until the server answers, then read (and drop) the server's answer
/// until it has been quiet for a moment, so the command has been carried out. Returns the
/// number of answer bytes dropped.
async fn forward_until_answered(
    client: &mut TcpStream,
    server: &mut TcpStream,
    from_client: &mut [u8],
    from_server: &mut [u8],
) -> usize {
    use std::time::Duration;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answer = 0;
    loop {
        tokio::select! {
            read = client.read(from_client) => match read {
                Ok(n) if n > 0 => {
                    if server.write_all(&from_client[..n]).await.is_err() {
                        return answer;
                    }
                }
                _ => return answer,
            },
            read = server.read(from_server) => match read {
                Ok(n) if n > 0 => {
                    answer += n;
                    break;
                }
                _ => return answer,
            },
            _ = tokio::time::sleep_until(give_up) => return answer,
        }
    }
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), server.read(from_server)).await
    {
        if n == 0 {
            break;
        }
        answer += n;
    }
    answer
}

async fn pump(mut client: TcpStream, mut server: TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut server_sent: u64 = 0;
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                let rule = take_rule_if(&shared, |rule| matches!(
                    rule,
                    CutRule::ClientWriteAfterServerSent { bytes, .. } if server_sent >= bytes
                ));
                if let Some(CutRule::ClientWriteAfterServerSent { forward, .. }) = rule {
                    if forward {
                        // Let the server act on the command, then lose its answer.
                        if server.write_all(&from_client[..n]).await.is_err() {
                            break;
                        }
                        let answer = forward_until_answered(
                            &mut client,
                            &mut server,
                            &mut from_client,
                            &mut from_server,
                        )
                        .await;
                        record_cut(&shared, format!(
                            "client write of {n} bytes after {server_sent} server bytes forwarded, the server's {answer}-byte answer dropped"
                        ));
                    } else {
                        record_cut(&shared, format!(
                            "client write of {n} bytes after {server_sent} server bytes dropped before the server"
                        ));
                    }
                    break;
                }
                if server.write_all(&from_client[..n]).await.is_err() {
                    break;
                }
            }
            read = server.read(&mut from_server) => {
                let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                server_sent += n as u64;
                let cut = take_rule_if(&shared, |rule| matches!(
                    rule,
                    CutRule::ServerSent { bytes } if server_sent >= bytes
                ));
                if cut.is_some() {
                    record_cut(&shared, format!("after {server_sent} server bytes (the last {n} not delivered)"));
                    break;
                }
                if client.write_all(&from_server[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping both streams closes them: the client sees the connection reset/closed.
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
}
