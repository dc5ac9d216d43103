//! What the fault tests share: accounts, a poller against the shared Dovecot, SQS events, and the
//! crash-injecting idempotency store and hanging mail port of the send path.

use super::*;

pub(crate) const PASSWORD: &str = "fault-matrix password";

pub(crate) fn token_service() -> Arc<TokenService> {
    Arc::new(TokenService::new(
        Arc::new(SecretsManagerStore::from_conf(&stack().moto().sdk_config())),
        IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(10),
            ..TokenServiceConfig::default()
        },
    ))
}

/// An account secret (password only) for a new user of a new tenant; returns (upn, account).
pub(crate) async fn new_account(prefix: &str) -> (String, String) {
    let account = mailbridge_tests::new_password_account(prefix, PASSWORD)
        .await
        .unwrap();
    let short = account.secret_name["mailbridge/".len()..].to_owned();
    (account.upn, short)
}

/// A state table, a ticket sink path and poller deps against the shared Dovecot.
pub(crate) struct Poller {
    pub(crate) table: String,
    pub(crate) sink: String,
    pub(crate) deps: PollDeps,
}

impl Poller {
    pub(crate) async fn new() -> Poller {
        let aws = stack().moto().sdk_config();
        let table = create_state_table("fm-poll").await.unwrap();
        let dovecot = stack().dovecot();
        let deps = PollDeps {
            tokens: token_service(),
            connector: Arc::new(
                ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
            ),
            state: Arc::new(DynamoStateStore::new(dynamodb(), &table)),
            sinks: Arc::new(SecretsSinkFactory::new(
                mailbridge::http::default_client().unwrap(),
                aws_sdk_secretsmanager::Client::new(&aws),
                RetryPolicy {
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(500),
                    max_attempts: 3,
                    attempt_timeout: Duration::from_secs(5),
                },
            )),
            parse: ParseContext { thread_key: None },
            max_concurrent_mailboxes: 4,
            deadline_margin: Duration::from_secs(2),
            dedupe_ttl: Duration::from_secs(3600),
            targets: mailbridge::mailbox::TargetPolicy::local(),
            memory: std::sync::Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
        };
        Poller {
            table,
            sink: unique("fm-sink"),
            deps,
        }
    }

    pub(crate) async fn mailbox(
        &self,
        name: &str,
        user: &str,
        account: &str,
        extra: serde_json::Value,
    ) {
        let mut fields = json!({
            "user": user,
            "account": account,
            "host": "localhost",
            "port": stack().dovecot().imaps_port,
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        for (k, v) in extra.as_object().unwrap() {
            fields[k] = v.clone();
        }
        put_mailbox_config(
            &dynamodb(),
            &self.table,
            name,
            &fields,
            &mailbridge::mailbox::TargetPolicy::local(),
        )
        .await
        .unwrap();
    }

    pub(crate) async fn poll(&self) -> PollReport {
        poll_mailboxes::poll_once(&self.deps, None, Instant::now() + Duration::from_secs(60))
            .await
            .unwrap()
    }
}

pub(crate) fn status<'a>(report: &'a PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

pub(crate) fn mail(id: &str, subject: &str) -> Vec<u8> {
    mailbridge_tests::mail::customer_mail(id, subject, "Please help.")
}

/// Build the SQS event for `bodies` sent to a fresh queue (records as Lambda delivers them).
pub(crate) async fn event_for(bodies: &[serde_json::Value]) -> SqsEvent {
    let (queue_url, _dlq) = create_queue_with_dlq(&unique("fm-graph"), 5).await.unwrap();
    for body in bodies {
        sqs()
            .send_message()
            .queue_url(&queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    let mut records = Vec::new();
    for _ in 0..20 {
        if records.len() >= bodies.len() {
            break;
        }
        let out = sqs()
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id().map(str::to_owned);
            record.receipt_handle = m.receipt_handle().map(str::to_owned);
            record.body = m.body().map(str::to_owned);
            records.push(record);
        }
    }
    assert_eq!(records.len(), bodies.len());
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

/// Crash injection through the idempotency port: claims with a fixed `lease` (long, so "while
/// the lease lives" holds on any machine), [`CrashingIdempotency::expire_leases`] for "the lease
/// ran out" (production leases are the invocation's remaining time + 60 s), and an optional
/// hang in `complete` (the process dies after Graph's 202, before the record).
pub(crate) struct CrashingIdempotency {
    pub(crate) inner: DynamoIdempotencyStore,
    pub(crate) table: String,
    pub(crate) lease: Duration,
    pub(crate) hang_in_complete: std::sync::atomic::AtomicBool,
    pub(crate) hung: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl mailbridge::state_table::IdempotencyStore for CrashingIdempotency {
    async fn claim(
        &self,
        id: &str,
        payload_hash: &str,
        _lease: Duration,
    ) -> Result<mailbridge::state_table::Claim, mailbridge::state_table::StoreError> {
        self.inner.claim(id, payload_hash, self.lease).await
    }
    async fn claim_many(
        &self,
        keys: &[(String, String)],
        _lease: Duration,
    ) -> Vec<Result<mailbridge::state_table::Claim, mailbridge::state_table::StoreError>> {
        self.inner.claim_many(keys, self.lease).await
    }
    async fn complete(
        &self,
        id: &str,
        payload_hash: &str,
        lease_token: &str,
        graph_request_id: Option<&str>,
        ttl: Duration,
    ) -> Result<(), mailbridge::state_table::StoreError> {
        if self
            .hang_in_complete
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.hung.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.inner
            .complete(id, payload_hash, lease_token, graph_request_id, ttl)
            .await
    }
    async fn release(
        &self,
        id: &str,
        lease_token: &str,
    ) -> Result<(), mailbridge::state_table::StoreError> {
        self.inner.release(id, lease_token).await
    }
}

impl CrashingIdempotency {
    /// "The lease ran out", without racing the clock: every in-progress claim in this test's
    /// table gets a lease that ended 10 s ago, which is what DynamoDB's claim condition
    /// (`lease_expires_at < now`) sees once a real lease has run out.
    pub(crate) async fn expire_leases(&self) {
        use aws_sdk_dynamodb::types::AttributeValue;
        let client = dynamodb();
        let items = client
            .scan()
            .table_name(&self.table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let past = chrono::Utc::now().timestamp() - 10;
        let mut expired = 0;
        for item in items {
            if item
                .get("status")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                != Some("in_progress")
            {
                continue;
            }
            client
                .update_item()
                .table_name(&self.table)
                .key("pk", item["pk"].clone())
                .update_expression("SET lease_expires_at = :past")
                .expression_attribute_values(":past", AttributeValue::N(past.to_string()))
                .send()
                .await
                .unwrap();
            expired += 1;
        }
        assert!(expired > 0, "no in-progress claim to expire");
    }
}

/// Crash injection through the mail port: hangs before reaching Graph while `hang` is set;
/// while `lose_answer` is set, Graph gets the request and accepts it, but the answer is lost
/// (the client sees the timeout it would see when the 202 never arrives).
pub(crate) struct HangingSender {
    pub(crate) inner: GraphClient,
    pub(crate) hang: std::sync::atomic::AtomicBool,
    pub(crate) entered: std::sync::atomic::AtomicUsize,
    pub(crate) lose_answer: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl mailbridge::graph::MailSender for HangingSender {
    async fn send_mail(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph::OutgoingMail,
        timeout: Duration,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph::GraphError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let sent = self.inner.send_mail(token, mail, timeout).await;
        if sent.is_ok() && self.lose_answer.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mailbridge::graph::GraphError::Transport {
                detail: "operation timed out".into(),
                timed_out: true,
                after_request: true,
            });
        }
        sent
    }

    async fn send_mime(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph::OutgoingMime,
        timeout: Duration,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph::GraphError> {
        self.inner.send_mime(token, mail, timeout).await
    }

    async fn send_draft(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph_draft::DraftMail,
        deadline: tokio::time::Instant,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph_draft::DraftFailure> {
        self.inner.send_draft(token, mail, deadline).await
    }
}

pub(crate) async fn sqs_deps(
    idempotency: Arc<CrashingIdempotency>,
    mail: Arc<HangingSender>,
) -> Arc<Deps> {
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-crash-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    Arc::new(Deps {
        tokens: token_service(),
        mail,
        idempotency,
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url)),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    })
}

pub(crate) async fn crash_points(
    lease: Duration,
) -> (Arc<CrashingIdempotency>, Arc<HangingSender>) {
    let aws = stack().moto().sdk_config();
    let table = create_state_table("fm-crash").await.unwrap();
    let idempotency = Arc::new(CrashingIdempotency {
        inner: DynamoIdempotencyStore::new(aws_sdk_dynamodb::Client::new(&aws), table.clone()),
        table,
        lease,
        hang_in_complete: false.into(),
        hung: 0.into(),
    });
    let mail = Arc::new(HangingSender {
        inner: GraphClient::new(&stack().graph().v1_url()).unwrap(),
        hang: false.into(),
        entered: 0.into(),
        lose_answer: false.into(),
    });
    (idempotency, mail)
}
