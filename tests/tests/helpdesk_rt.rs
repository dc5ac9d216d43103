//! The RT ticket sink against a real Request Tracker 5 on 127.0.0.1.

use local_stack::request_tracker;

#[tokio::test]
async fn rt_instance_serves_rest_2_with_the_seeded_account() {
    let rt = request_tracker::shared();
    let root = rt.root_client();
    let version = root.get("rt").await.unwrap();
    assert!(
        version["Version"].as_str().unwrap().starts_with("5."),
        "{version}"
    );
    let queue = mailbridge_tests::unique("rt-smoke");
    root.create_queue(&queue).await.unwrap();
    let adapter =
        request_tracker::RtClient::new(&rt.rest_url(), format!("token {}", rt.adapter_token));
    let q = adapter.get(&format!("queue/{queue}")).await.unwrap();
    let fields: Vec<&str> = q["TicketCustomFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(fields, [request_tracker::KEY_FIELD]);
}
