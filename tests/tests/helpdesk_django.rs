//! The django-helpdesk ticket sink against a real django-helpdesk (PyPI, REST API on, SQLite) on
//! 127.0.0.1, started per test by the local stack (`local_stack::django_helpdesk`).

use std::time::Duration;

use local_stack::django_helpdesk::{DjangoHelpdesk, NON_STAFF_USER};
use local_stack::http_fault_proxy::{HttpFault, HttpFaultProxy};
use mailbridge_tests::init_tracing;

async fn helpdesk(label: &str) -> DjangoHelpdesk {
    init_tracing();
    let dir = local_stack::default_run_dir(label).expect("run folder");
    DjangoHelpdesk::start(&dir).await.unwrap_or_else(|e| {
        panic!("django-helpdesk did not start: {e:#}");
    })
}

#[tokio::test]
async fn the_local_helpdesk_answers_staff_only_and_the_proxy_can_drop_an_answer() {
    let hd = helpdesk("hd-smoke").await;
    let http = reqwest::Client::new();
    let tickets = format!("{}tickets/", hd.api_url);
    let token = format!("Token {}", hd.token);
    let ok = http
        .get(&tickets)
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let non_staff = http
        .get(&tickets)
        .basic_auth(NON_STAFF_USER, Some(&hd.password))
        .send()
        .await
        .unwrap();
    assert_eq!(non_staff.status(), 403);

    let proxy = HttpFaultProxy::start(&hd.base_url).await.unwrap();
    proxy.arm("POST", "/helpdesk/api/tickets/", HttpFault::DropAnswer, 1);
    let through = format!("{}/helpdesk/api/tickets/", proxy.base_url);
    let ticket = serde_json::json!({"queue": 1, "title": "t", "description": "d", "priority": 3});
    let lost = http
        .post(&through)
        .header("Authorization", &token)
        .json(&ticket)
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(lost.is_err(), "the answer must be lost: {lost:?}");
    assert_eq!(
        hd.tickets().await.unwrap().len(),
        1,
        "the ticket was created"
    );
    let passed = http
        .post(&through)
        .header("Authorization", &token)
        .json(&ticket)
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 201);
    assert_eq!(hd.tickets().await.unwrap().len(), 2);
    assert!(!proxy.armed());
}
