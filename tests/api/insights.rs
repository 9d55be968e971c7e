//! The insights page and its JSON: outcomes per day, failures by stage and
//! error class, stage durations and queue samples, from real scans.

use std::time::Duration;

use serde_json::json;

use vmscan::domain::StageName;

use crate::support::{backends, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_count_real_scans_by_outcome_stage_and_error() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![7u8; 200_000]).unwrap();
        let url = format!("file://{}", path.display());
        let root = dir.path().to_path_buf();
        let app = TestApp::spawn(backend, |c| {
            c.fetch.allowed_roots = vec![root];
            c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
        })
        .await;
        let (_, empty) = app.get("/api/v1/insights").await;
        assert_eq!(empty["totals"]["succeeded"], 0, "{empty:#}");
        assert_eq!(empty["days"].as_array().unwrap().len(), 30);

        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(
                app.submit(json!({"url": url})).await["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        for n in ["0", "1"] {
            let bad = format!("sha256:{}", n.repeat(64));
            ids.push(
                app.submit(json!({"url": url, "checksum": bad})).await["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        for id in &ids {
            app.wait_final(id, Duration::from_secs(30)).await;
        }

        let (status, i) = app.get("/api/v1/insights").await;
        assert_eq!(status, 200);
        assert_eq!(i["totals"]["succeeded"], 2, "{i:#}");
        assert_eq!(i["totals"]["failed"], 2, "{i:#}");
        let today = i["days"].as_array().unwrap().last().unwrap();
        assert_eq!(today["succeeded"], 2);
        assert_eq!(today["failed"], 2);
        // Both failures are one class in the checksum stage, whatever the digest.
        assert_eq!(i["failures"]["by_stage"][0]["label"], "checksum", "{i:#}");
        assert_eq!(i["failures"]["by_stage"][0]["count"], 2);
        let top = &i["failures"]["top_errors"][0];
        assert_eq!(top["count"], 2, "{i:#}");
        assert_eq!(top["stage"], "checksum");
        assert!(
            top["example"]
                .as_str()
                .unwrap()
                .starts_with("checksum failed:"),
            "{top}"
        );
        // Four fetches succeeded, two checksums (the other two failed).
        let runs = |stage: &str| {
            i["stage_durations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["key"] == stage)
                .map(|s| s["weeks"][0]["runs"].as_i64().unwrap())
        };
        assert_eq!(runs("fetch"), Some(4), "{i:#}");
        assert_eq!(runs("checksum"), Some(2), "{i:#}");
        // Stage order follows the pipeline.
        assert_eq!(i["stage_durations"][0]["key"], "fetch");

        // The reaper folds the day's deltas: the counts stay the same.
        app.store.fold_daily_outcomes().await.unwrap();
        assert_eq!(app.store.fold_daily_outcomes().await.unwrap(), 0);
        let (_, again) = app.get("/api/v1/insights").await;
        assert_eq!(again["totals"], i["totals"]);

        // One queue sample per five-minute slot, however many replicas take one.
        vmscan::insights::sample_queue(&app.store).await.unwrap();
        vmscan::insights::sample_queue(&app.store).await.unwrap();
        let (_, q) = app.get("/api/v1/insights").await;
        assert_eq!(q["queue"]["samples"].as_array().unwrap().len(), 1, "{q:#}");

        let (status, page) = app.get_text("/insights").await;
        assert_eq!(status, 200);
        for needle in [
            "id=\"chart-outcomes\"",
            "id=\"chart-failed-stages\"",
            "id=\"chart-errors\"",
            "id=\"chart-queue\"",
            "id=\"stage-durations\"",
            "id=\"kpi-failed\">2<",
            "checksum failed:",
        ] {
            assert!(
                page.contains(needle),
                "{needle} missing from the insights page"
            );
        }
        app.stop().await;
    }
}
