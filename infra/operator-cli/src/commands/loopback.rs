//! The loopback redirect listener of `mailbridge login --browser` (RFC 8252 §7.3): an HTTP
//! server on 127.0.0.1 that waits for the browser to come back from the sign-in page with a
//! code (or an error), and an attempt to open the system browser.
//!
//! It binds the loopback interface only, so nothing outside this machine can reach it, answers
//! the first request that looks like a sign-in response, and then stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

/// A listening redirect endpoint.
pub struct Loopback {
    port: u16,
    responses: mpsc::Receiver<HashMap<String, String>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

type Sink = Arc<Mutex<Option<mpsc::Sender<HashMap<String, String>>>>>;

async fn redirect(
    State(sink): State<Sink>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let is_response = ["code", "error", "state"]
        .iter()
        .any(|k| query.contains_key(*k));
    if !is_response {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>This is mailbridge's sign-in listener; it expects the identity platform's redirect.</p>"),
        )
            .into_response();
    }
    // Only the first sign-in response counts; later ones are refused.
    let Some(sender) = sink.lock().expect("sink lock").take() else {
        return (
            StatusCode::CONFLICT,
            Html("<p>mailbridge already received a sign-in response. Return to the terminal.</p>"),
        )
            .into_response();
    };
    let page = match query.get("error") {
        Some(error) => format!(
            "<h1>Sign-in failed</h1><p>{}: {}</p><p>Return to the terminal for what to do.</p>",
            escape(error),
            escape(query.get("error_description").map_or("", String::as_str))
        ),
        None => {
            "<h1>Sign-in received</h1><p>You can close this window and return to the terminal.</p>"
                .to_owned()
        }
    };
    let _ = sender.send(query).await;
    Html(format!(
        "<!doctype html><html><head><title>mailbridge sign-in</title></head><body>{page}</body></html>"
    ))
    .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Loopback {
    /// Listen on 127.0.0.1:`port` (0: a free port).
    pub async fn bind(port: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("listen on 127.0.0.1:{port} for the sign-in redirect"))?;
        let port = listener.local_addr()?.port();
        let (sender, responses) = mpsc::channel(1);
        let sink: Sink = Arc::new(Mutex::new(Some(sender)));
        let app = axum::Router::new()
            .route("/", axum::routing::get(redirect))
            .with_state(sink);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            port,
            responses,
            stop: Some(stop),
            server,
        })
    }

    /// `http://localhost:<port>`: the redirect URI to send (registered as `http://localhost`;
    /// Microsoft ignores the port of a localhost redirect URI).
    pub fn redirect_uri(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    /// The query of the first sign-in response, or `None` after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Option<HashMap<String, String>> {
        tokio::time::timeout(timeout, self.responses.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stop listening (the browser's page has been answered by then).
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

/// Try to open `url` in the system browser. False when there is none (no desktop session, no
/// opener) or it failed: the caller has printed the URL anyway, so this never fails the login.
pub fn open_browser(url: &str) -> bool {
    let mut command = if cfg!(target_os = "macos") {
        let mut c = std::process::Command::new("open");
        c.arg(url);
        c
    } else if cfg!(windows) {
        let mut c = std::process::Command::new("rundll32");
        c.args(["url.dll,FileProtocolHandler", url]);
        c
    } else {
        // A desktop session is what makes a browser reachable; over SSH there is none.
        let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        if !desktop {
            return false;
        }
        let mut c = std::process::Command::new("xdg-open");
        c.arg(url);
        c
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match command.spawn() {
        Ok(mut child) => {
            // Reap it in the background; its exit status does not matter.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
}
