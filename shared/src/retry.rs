//! Retrying: one policy type, one `Retry-After` reader, one deadline cap, one loop. Every HTTP
//! client of the project retries through here: Graph (sendMail's in-invocation waits in the
//! sender's batch loop, each step of the draft route, every request of a mailbox read through
//! Graph), the identity platform client, and the ticket sinks ([`send_with_retry`]).
//!
//! [`retry`] runs an attempt until it succeeds, the caller's verdict says stop, the policy's
//! attempts run out, or the next wait would end past the deadline. The wait is exponential backoff
//! with jitter (backon) — or the server's `Retry-After` when that is longer: a server's
//! `Retry-After` is never undercut, and not capped by [`RetryPolicy::max_backoff`]. When the wait
//! would end past the deadline ([`wait_fits`], the one deadline cap) the loop gives up at once
//! (the caller leaves its work for the next run) instead of sleeping into it.
//!
//! [`send_with_retry`] is that loop for one HTTP request (rebuilt for every attempt, so
//! multipart bodies work): it retries what a later attempt can fix — 408, 425, 429, 5xx, timeouts
//! and connection errors — and hands every other answer back for the caller to interpret.

use std::future::Future;
use std::time::Duration;

use crate::error::error_chain;
use backon::BackoffBuilder as _;
use tokio::time::Instant;

/// How often and how patiently to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Largest backoff between attempts (a server's `Retry-After` may ask for more and gets it).
    pub max_backoff: Duration,
    /// Most attempts per request.
    pub max_attempts: u32,
    /// Timeout of one attempt (also bounded by the deadline).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            max_attempts: 6,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoffs between attempts: exponential from `initial_backoff`, at most
    /// `max_backoff`, with jitter.
    pub fn backoffs(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// `Retry-After` as a wait: delta-seconds or an HTTP date (RFC 9110 10.2.3); a date in the past
/// is a zero wait. None when absent or unreadable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// [`retry_after`] on the header's text.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt: the backoff, or what the server asked when that is longer.
pub fn next_wait(backoff: Duration, asked: Option<Duration>) -> Duration {
    asked.map_or(backoff, |asked| asked.max(backoff))
}

/// The one deadline cap: whether a wait of `wait` from now ends before `deadline`.
pub fn wait_fits(wait: Duration, deadline: Instant) -> bool {
    Instant::now() + wait < deadline
}

/// What the caller makes of a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt, after at least `after` when the server said so.
    Retry {
        /// The server's `Retry-After`, when given.
        after: Option<Duration>,
    },
    /// Not worth another attempt.
    Stop,
}

/// Why [`retry`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUpBecause {
    /// The verdict was [`Verdict::Stop`].
    NotRetryable,
    /// The policy's `max_attempts` were used.
    Attempts,
    /// The next attempt, `wait` away, would start after the deadline.
    Deadline {
        /// The wait it would have taken.
        wait: Duration,
    },
}

/// The last failure of [`retry`], and the one before it (when the last is only a cut-off, the
/// one before says what was wrong).
#[derive(Debug)]
pub struct Failure<E> {
    /// The last attempt's error.
    pub error: E,
    /// The error of the attempt before, if any.
    pub previous: Option<E>,
    /// Attempts made.
    pub attempts: u32,
    /// Why there was no further attempt.
    pub because: GaveUpBecause,
}

/// Run `attempt` (called once per attempt) until it succeeds, `verdict` says stop, the policy's
/// attempts run out, or the next wait would end after `deadline`. On success: the value and the
/// attempts it took.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    mut attempt: F,
    verdict: impl Fn(&E) -> Verdict,
) -> Result<(T, u32), Failure<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoffs = policy.backoffs();
    let mut attempts = 0;
    let mut previous = None;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => return Ok((value, attempts)),
            Err(error) => error,
        };
        let fail = |error, previous, because| Failure {
            error,
            previous,
            attempts,
            because,
        };
        let asked = match verdict(&error) {
            Verdict::Stop => return Err(fail(error, previous, GaveUpBecause::NotRetryable)),
            Verdict::Retry { after } => after,
        };
        if attempts >= policy.max_attempts {
            return Err(fail(error, previous, GaveUpBecause::Attempts));
        }
        let wait = next_wait(backoffs.next().unwrap_or(policy.max_backoff), asked);
        if !wait_fits(wait, deadline) {
            return Err(fail(error, previous, GaveUpBecause::Deadline { wait }));
        }
        tracing::debug!(
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            server_asked_ms = asked.map(|a| a.as_millis() as u64),
            "attempt failed in a retryable way; retrying"
        );
        tokio::time::sleep(wait).await;
        previous = Some(error);
    }
}

/// Whether an HTTP status is worth another attempt of the same request.
pub fn is_retryable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

/// The request could not be completed: every attempt failed in a retryable way, or no time was
/// left. Transient by nature: the caller leaves its work for later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (after {attempts} attempt(s))")]
pub struct GaveUp {
    /// Attempts made.
    pub attempts: u32,
    /// The last problem (status and start of the body, or the transport error).
    pub detail: String,
}

/// A final answer: the response (2xx or a non-retryable status) and the attempts it took.
#[derive(Debug)]
pub struct Answered {
    /// The response, body unread.
    pub response: reqwest::Response,
    /// Attempts it took (1 = first try).
    pub attempts: u32,
}

/// A retryable HTTP failure: what went wrong, and the server's `Retry-After`.
struct HttpFailure {
    detail: String,
    server_wait: Option<Duration>,
}

/// Send the request `build` makes (called once per attempt) until it gets an answer that is not
/// retryable, or gives up at `deadline` / after `policy.max_attempts`.
pub async fn send_with_retry(
    policy: &RetryPolicy,
    deadline: Instant,
    mut build: impl FnMut() -> reqwest::RequestBuilder,
) -> Result<Answered, GaveUp> {
    let result = retry(
        policy,
        deadline,
        || {
            let request = build();
            async move {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(HttpFailure {
                        detail: "deadline reached".into(),
                        server_wait: None,
                    });
                }
                match request
                    .timeout(remaining.min(policy.attempt_timeout))
                    .send()
                    .await
                {
                    Ok(response) if !is_retryable_status(response.status()) => Ok(response),
                    Ok(response) => {
                        let server_wait = retry_after(response.headers());
                        let status = response.status().as_u16();
                        let body = excerpt(&crate::http::read_excerpt(response).await);
                        Err(HttpFailure {
                            detail: format!("HTTP {status}: {body}"),
                            server_wait,
                        })
                    }
                    Err(e) if e.is_timeout() => Err(HttpFailure {
                        detail: "request timed out".into(),
                        server_wait: None,
                    }),
                    Err(e) => Err(HttpFailure {
                        detail: format!("request failed: {}", error_chain(&e)),
                        server_wait: None,
                    }),
                }
            }
        },
        |failure| Verdict::Retry {
            after: failure.server_wait,
        },
    )
    .await;
    match result {
        Ok((response, attempts)) => Ok(Answered { response, attempts }),
        Err(Failure {
            error,
            attempts,
            because,
            ..
        }) => Err(GaveUp {
            attempts,
            detail: match because {
                GaveUpBecause::Deadline { wait } => format!(
                    "{} (the next attempt, {} ms away, would end after the deadline)",
                    error.detail,
                    wait.as_millis()
                ),
                _ => error.detail,
            },
        }),
    }
}

/// The start of a response body on one line, for errors and logs.
pub fn excerpt(body: &str) -> String {
    let trimmed: String = body.chars().take(300).collect();
    trimmed.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let wait = parse_retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(80) && wait <= Duration::from_secs(90));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_statuses_a_later_attempt_can_fix_are_retried() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(
                reqwest::StatusCode::from_u16(code).unwrap()
            ));
        }
        for code in [200, 201, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!is_retryable_status(
                reqwest::StatusCode::from_u16(code).unwrap()
            ));
        }
    }

    /// A server that answers 429 with `Retry-After: 2` and then 201: the second attempt must
    /// not start before the two seconds are up, even with a backoff cap of 50 ms.
    #[tokio::test]
    async fn a_servers_retry_after_is_never_undercut() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            for answer in [
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                arrivals.push(std::time::Instant::now());
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await.unwrap();
                socket.write_all(answer.as_bytes()).await.unwrap();
                socket.shutdown().await.ok();
            }
            arrivals
        });
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(5),
        };
        let client = reqwest::Client::new();
        let answered = send_with_retry(&policy, Instant::now() + Duration::from_secs(10), || {
            client.post(&url)
        })
        .await
        .unwrap();
        assert_eq!(answered.response.status().as_u16(), 201);
        assert_eq!(answered.attempts, 2);
        let arrivals = server.await.unwrap();
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= Duration::from_secs(2),
            "the second attempt came {waited:?} after the first; the server asked for 2 s"
        );
    }

    #[tokio::test]
    async fn a_wait_past_the_deadline_gives_up_at_once() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy")
                .await
                .unwrap();
        });
        let client = reqwest::Client::new();
        let gave_up = send_with_retry(
            &RetryPolicy::default(),
            Instant::now() + Duration::from_secs(30),
            || client.get(&url),
        )
        .await
        .unwrap_err();
        assert_eq!(gave_up.attempts, 1);
        assert!(
            gave_up.detail.contains("HTTP 503: busy"),
            "{}",
            gave_up.detail
        );
    }
}
