//! The Flexera One client against the fake back end.
use secrecy::SecretString;
use vmscan::inventory::{FlexeraOne, FlexeraOneConfig, InventoryClient};

use crate::support::flexera::{FakeFlexera, ORG, REFRESH_TOKEN, REPORT};

fn client(fake: &FakeFlexera, token: &str, report: &str) -> FlexeraOne {
    FlexeraOne::new(FlexeraOneConfig {
        token_url: format!("{}/oidc/token", fake.base()),
        api_base: fake.base(),
        org_id: ORG.into(),
        report_id: report.into(),
        refresh_token: Some(SecretString::from(token.to_string())),
        ..FlexeraOneConfig::default()
    })
}

#[tokio::test]
async fn finds_a_computer_across_pages_and_reuses_its_token() {
    let fake = FakeFlexera::start().await;
    for n in ["vmscan-a1", "vmscan-a10", "vmscan-a2", "vmscan-a3"] {
        fake.add_computer(n);
    }
    let c = client(&fake, REFRESH_TOKEN, REPORT);
    // "vmscan-a1" is a substring of "vmscan-a10": only the exact name counts,
    // and it sits behind a nextPage link.
    let hits = c.find_computer("vmscan-a10").await.unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits.iter().all(|h| h.computer_name == "vmscan-a10"));
    let hits = c.find_computer("vmscan-a1").await.unwrap();
    assert!(hits.iter().all(|h| h.computer_name == "vmscan-a1") && hits.len() == 2);
    assert!(c.find_computer("vmscan-zz").await.unwrap().is_empty());
    assert_eq!(fake.token_requests(), 1, "the access token is cached");
    assert!(fake.report_requests() >= 4, "pages were followed");
}

#[tokio::test]
async fn renews_a_revoked_token_once() {
    let fake = FakeFlexera::start().await;
    fake.add_computer("host1");
    let c = client(&fake, REFRESH_TOKEN, REPORT);
    assert_eq!(c.find_computer("host1").await.unwrap().len(), 2);
    fake.revoke_tokens();
    assert_eq!(c.find_computer("host1").await.unwrap().len(), 2);
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn reports_token_report_and_server_errors_clearly() {
    let fake = FakeFlexera::start().await;
    let bad = client(&fake, "wrong", REPORT);
    let e = bad.find_computer("h").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot get an access token: 400 Bad Request")
            && e.to_string().contains("invalid_grant"),
        "{e}"
    );
    assert!(!e.is_retryable());

    let missing = client(&fake, REFRESH_TOKEN, "999");
    let e = missing.find_computer("h").await.unwrap_err();
    assert!(
        e.to_string().contains("404") && e.to_string().contains("report 999 not found"),
        "{e}"
    );

    fake.fail_reports_with(Some(503));
    let e = client(&fake, REFRESH_TOKEN, REPORT)
        .find_computer("h")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");

    let nowhere = FlexeraOne::new(FlexeraOneConfig {
        token_url: "http://127.0.0.1:9/oidc/token".into(),
        api_base: "http://127.0.0.1:9".into(),
        refresh_token: Some(SecretString::from("x".to_string())),
        timeout_secs: 2,
        ..FlexeraOneConfig::default()
    });
    let e = nowhere.find_computer("h").await.unwrap_err();
    assert!(e.to_string().contains("cannot reach"), "{e}");
}

#[tokio::test]
async fn a_service_account_logs_in_with_client_credentials_and_pages_by_skip_token() {
    use crate::support::flexera::{CLIENT_ID, CLIENT_SECRET};
    let fake = FakeFlexera::start().await;
    // expires_in as a string: the client takes either type.
    fake.expires_in_as_string(true);
    for n in ["vmscan-b1", "vmscan-b2", "vmscan-b3"] {
        fake.add_computer(n);
    }
    let service_account = |secret: &str| {
        FlexeraOne::new(FlexeraOneConfig {
            token_url: format!("{}/oidc/token", fake.base()),
            api_base: fake.base(),
            org_id: ORG.into(),
            report_id: REPORT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(SecretString::from(secret.to_string())),
            ..FlexeraOneConfig::default()
        })
    };
    let c = service_account(CLIENT_SECRET);
    // "vmscan-b" matches six rows, three pages of two: two skipToken links
    // followed, each double-encoded by the service.
    let hits = c.find_computer("vmscan-b").await.unwrap();
    assert!(hits.is_empty(), "only exact names count");
    assert_eq!(fake.report_requests(), 3);
    let hits = c.find_computer("vmscan-b3").await.unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(fake.grants(), ["client_credentials"], "the token is cached");
    assert!(fake.report_requests() >= 4, "pages were followed");

    let e = service_account("nope")
        .find_computer("h")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_client"), "{e}");
}

#[tokio::test]
async fn a_skip_token_sent_still_encoded_is_refused() {
    let fake = FakeFlexera::start().await;
    for n in ["h1", "h2"] {
        fake.add_computer(n);
    }
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/oidc/token", fake.base()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH_TOKEN),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = token["access_token"].as_str().unwrap();
    let first: serde_json::Value = http
        .get(format!(
            "{}/fnms/v1/orgs/{ORG}/reports/{REPORT}/execute?searchText=h",
            fake.base()
        ))
        .bearer_auth(at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = first["nextPage"].as_str().unwrap();
    assert!(
        next.contains("skipToken=") && next.contains("%253D"),
        "{next}"
    );
    // Followed verbatim, the token arrives as "…%3D": not one the service issued.
    let verbatim = http
        .get(format!("{}{next}", fake.base()))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(verbatim.status(), 400);
}
