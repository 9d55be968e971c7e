//! One storage test suite, run against every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vmscan::domain::{JobId, JobState, StageName, StageState};
use vmscan::store::{self, CancelOutcome, DynStore, JobFilter, LogLevel, NewJob, StoreError};

use crate::support::{backends, fresh_pg_database, Backend};

async fn open(backend: Backend, tmp: &tempfile::TempDir) -> DynStore {
    let url = match backend {
        Backend::Sqlite => format!("sqlite:{}", tmp.path().join("t.db").display()),
        Backend::Postgres => fresh_pg_database().await,
    };
    store::open(&url, 8).await.expect("store opens")
}

fn new_job(url: &str) -> NewJob {
    NewJob {
        url: url.parse().unwrap(),
        checksum: None,
        requested_by: Some("ann@example.com".into()),
        email: Some("ann@example.com".into()),
        note: None,
        options: json!({}),
    }
}

const LEASE: Duration = Duration::from_secs(30);

macro_rules! for_each_backend {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for backend in backends() {
                let tmp = tempfile::tempdir().unwrap();
                let store = open(backend, &tmp).await;
                eprintln!("{} on {backend:?}", stringify!($name));
                let f = $body;
                f(store).await;
            }
        }
    };
}

for_each_backend!(
    lists_jobs_newest_first_with_keyset_paging_and_filters,
    |s: DynStore| async move {
        let mut ids = Vec::new();
        for i in 0..7 {
            let mut j = new_job(&format!("https://h.example/{i}.img"));
            if i % 2 == 0 {
                j.requested_by = Some("bob@example.com".into());
            }
            ids.push(s.create_job(j).await.unwrap().id);
        }
        let page1 = s
            .list_jobs(&JobFilter {
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page1.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![ids[6], ids[5], ids[4]]
        );
        let page2 = s
            .list_jobs(&JobFilter {
                limit: 3,
                before: Some(ids[4]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page2.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![ids[3], ids[2], ids[1]]
        );
        let bobs = s
            .list_jobs(&JobFilter {
                limit: 50,
                requested_by: Some("bob@example.com".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(bobs.len(), 4);
        let queued = s
            .list_jobs(&JobFilter {
                limit: 50,
                state: Some(JobState::Queued),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(queued.len(), 7);
        let counts = s.count_by_state().await.unwrap();
        assert_eq!(counts, vec![(JobState::Queued, 7)]);
        assert_eq!(s.count_queued().await.unwrap(), 7);
        assert!(s.get_job(JobId::new()).await.unwrap().is_none());
    }
);

for_each_backend!(
    concurrent_claims_never_hand_out_a_job_twice,
    |s: DynStore| async move {
        for i in 0..40 {
            s.create_job(new_job(&format!("https://h.example/{i}.img")))
                .await
                .unwrap();
        }
        let s = Arc::new(s);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some((job, lease)) = s.claim(&format!("w{w}"), LEASE).await.unwrap() {
                    assert_eq!(lease.attempt, 1);
                    assert_eq!(job.state, JobState::Running);
                    mine.push(job.id);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 40, "every job claimed");
        assert_eq!(unique.len(), 40, "no job claimed twice");
    }
);

for_each_backend!(
    a_worker_that_lost_its_lease_cannot_write,
    |s: DynStore| async move {
        let job = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        let (_, old) = s
            .claim("old", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        let run = s.start_stage(&old, StageName::Fetch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reaped = s.reap_expired(3).await.unwrap();
        assert_eq!(reaped.requeued, vec![job.id]);
        let (j, new) = s.claim("new", LEASE).await.unwrap().unwrap();
        assert_eq!(new.attempt, 2);
        assert_eq!(j.lease_expiries, 1);
        // Every write of the old worker is refused.
        assert!(matches!(
            s.renew(&old, LEASE).await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            s.append_log(&old, None, LogLevel::Info, "zombie").await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            s.finish_stage(&old, run, StageState::Succeeded, &json!({}), None)
                .await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            s.finish_job(&old, JobState::Succeeded, None).await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            s.start_stage(&old, StageName::Checksum).await,
            Err(StoreError::Fenced(_))
        ));
        // The successor marks the orphaned run and goes on.
        assert_eq!(s.interrupt_stale_runs(&new).await.unwrap(), 1);
        let runs = s.stage_runs(job.id).await.unwrap();
        assert_eq!(runs[0].state, StageState::Interrupted);
        // /metrics totals: the refused finish counted nothing, the
        // interruption once, with the run's own duration; a second pass
        // finds nothing more to interrupt or count.
        assert_eq!(s.interrupt_stale_runs(&new).await.unwrap(), 0);
        let stats = s.stage_stats().await.unwrap();
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(
            (
                stats[0].stage.as_str(),
                stats[0].state.as_str(),
                stats[0].count
            ),
            ("fetch", "interrupted", 1)
        );
        assert_eq!(stats[0].total_ms, runs[0].duration_ms.unwrap());
        s.append_log(&new, Some(StageName::Fetch), LogLevel::Info, "resumed")
            .await
            .unwrap();
        s.finish_job(&new, JobState::Succeeded, None).await.unwrap();
        let j = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert!(j.locked_by.is_none());
        let log = s.log_lines(job.id, 0, 100).await.unwrap();
        assert!(log.iter().all(|l| l.message != "zombie"));
    }
);

for_each_backend!(
    lost_too_often_a_job_is_torn_down_then_failed,
    |s: DynStore| async move {
        let job = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        let short = Duration::from_millis(1);
        for round in 1..=2 {
            s.claim("w", short).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(
                s.reap_expired(3).await.unwrap().requeued,
                vec![job.id],
                "round {round}"
            );
        }
        s.claim("w", short).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = s.reap_expired(3).await.unwrap();
        assert_eq!(r.aborted, vec![job.id]);
        let j = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
        assert!(j.abort_reason.as_deref().unwrap().contains("lost 3 times"));
        s.claim("w", short).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = s.reap_expired(3).await.unwrap();
        assert_eq!(r.failed, vec![job.id]);
        let j = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(j.error.unwrap().contains("lost 3 times"));
    }
);

for_each_backend!(
    a_parked_job_holds_no_lease_and_wakes_when_due,
    |s: DynStore| async move {
        let job = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        let (_, lease) = s.claim("w", LEASE).await.unwrap().unwrap();
        let until = vmscan::domain::now_millis() + 400;
        s.park(&lease, until, "inventory report not in yet")
            .await
            .unwrap();
        let j = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Waiting);
        assert!(j.locked_by.is_none() && j.lease_expires_at.is_none());
        assert_eq!(
            j.wait_reason.as_deref(),
            Some("inventory report not in yet")
        );
        assert!(s.claim("w2", LEASE).await.unwrap().is_none(), "not due yet");
        tokio::time::sleep(Duration::from_millis(450)).await;
        let (j, lease2) = s.claim("w2", LEASE).await.unwrap().expect("due now");
        assert_eq!(j.id, job.id);
        assert_eq!(lease2.attempt, 2);
        assert!(j.wake_at.is_none());
    }
);

for_each_backend!(
    cancel_and_retry_follow_the_job_state,
    |s: DynStore| async move {
        let a = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        assert_eq!(
            s.request_cancel(a.id).await.unwrap(),
            CancelOutcome::Cancelled
        );
        assert_eq!(
            s.get_job(a.id).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
        assert_eq!(
            s.request_cancel(a.id).await.unwrap(),
            CancelOutcome::AlreadyFinal(JobState::Cancelled)
        );

        let b = s
            .create_job(new_job("https://h.example/b.img"))
            .await
            .unwrap();
        let (_, lease) = s.claim("w", LEASE).await.unwrap().unwrap();
        assert!(!s.renew(&lease, LEASE).await.unwrap());
        assert_eq!(
            s.request_cancel(b.id).await.unwrap(),
            CancelOutcome::Requested
        );
        assert!(
            s.renew(&lease, LEASE).await.unwrap(),
            "the worker sees the cancel"
        );
        assert!(s.cancel_requested(&lease).await.unwrap());
        s.finish_job(&lease, JobState::Cancelled, Some("cancelled by user"))
            .await
            .unwrap();

        let retried = s.retry_job(b.id).await.unwrap();
        assert_eq!(retried.state, JobState::Queued);
        assert!(!retried.cancel_requested);
        assert_eq!(retried.run_base_attempt, 2);
        assert!(matches!(
            s.retry_job(b.id).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.request_cancel(JobId::new()).await,
            Err(StoreError::NotFound(_))
        ));
    }
);

for_each_backend!(
    records_stage_runs_logs_and_resources,
    |s: DynStore| async move {
        let job = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        let (_, lease) = s.claim("w", LEASE).await.unwrap().unwrap();
        let run = s.start_stage(&lease, StageName::Fetch).await.unwrap();
        s.update_stage_detail(&lease, run, &json!({"bytes": 10, "progress": 0.5}))
            .await
            .unwrap();
        s.finish_stage(
            &lease,
            run,
            StageState::Succeeded,
            &json!({"bytes": 20}),
            None,
        )
        .await
        .unwrap();
        s.record_resource(&lease, "vm", "qemu", "vmscan-0001", &json!({"port": 2222}))
            .await
            .unwrap();
        for i in 0..30 {
            s.append_log(
                &lease,
                Some(StageName::Fetch),
                LogLevel::Info,
                &format!("line {i}"),
            )
            .await
            .unwrap();
        }
        s.append_system_log(job.id, LogLevel::Warn, "from the API")
            .await
            .unwrap();
        let runs = s.stage_runs(job.id).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].detail, json!({"bytes": 20}));
        assert!(runs[0].duration_ms.unwrap() >= 0);
        let res = s.resources(job.id).await.unwrap();
        assert_eq!(res.len(), 1);
        assert!(res[0].deleted_at.is_none());
        s.mark_resource_deleted(&lease, res[0].id).await.unwrap();
        assert!(s.resources(job.id).await.unwrap()[0].deleted_at.is_some());
        let first = s.log_lines(job.id, 0, 10).await.unwrap();
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].message, "line 0");
        let next = s.log_lines(job.id, first[9].id, 100).await.unwrap();
        assert_eq!(next.len(), 21);
        let tail = s.log_tail(job.id, 2).await.unwrap();
        assert_eq!(
            tail.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
            ["line 29", "from the API"]
        );
        let stats = s.stage_stats().await.unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].count, 1);
        assert_eq!(stats[0].total_ms, runs[0].duration_ms.unwrap());
    }
);

for_each_backend!(
    hand_back_returns_the_job_without_penalty,
    |s: DynStore| async move {
        let job = s
            .create_job(new_job("https://h.example/a.img"))
            .await
            .unwrap();
        let (_, lease) = s.claim("w", LEASE).await.unwrap().unwrap();
        s.hand_back(&lease).await.unwrap();
        let j = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
        assert_eq!(j.lease_expiries, 0);
        let (_, again) = s.claim("w2", LEASE).await.unwrap().unwrap();
        assert_eq!(again.attempt, 2);
    }
);

/// Counts each state of every job by listing them all (the ground truth the
/// trigger-kept counts must match).
async fn listed_counts(s: &DynStore) -> Vec<(JobState, i64)> {
    let mut by_state = std::collections::BTreeMap::<&'static str, (JobState, i64)>::new();
    for job in s
        .list_jobs(&JobFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
    {
        by_state
            .entry(job.state.as_str())
            .or_insert((job.state, 0))
            .1 += 1;
    }
    by_state.into_values().collect()
}

for_each_backend!(
    job_counts_stay_exact_under_concurrent_transitions_and_folds,
    |s: DynStore| async move {
        for i in 0..60 {
            s.create_job(new_job(&format!("https://h.example/{i}.img")))
                .await
                .unwrap();
        }
        let s = Arc::new(s);
        let mut tasks = Vec::new();
        // Four workers move jobs queued → running → waiting → running →
        // succeeded/failed (the opposite-direction transitions a per-state
        // counter row would deadlock on), while two tasks fold concurrently.
        for w in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                while let Some((_, lease)) = s.claim(&format!("w{w}"), LEASE).await.unwrap() {
                    n += 1;
                    if lease.attempt == 1 && !n.is_multiple_of(3) {
                        // Parked with a wake time already past: claimable again.
                        s.park(&lease, 0, "inventory report not in yet")
                            .await
                            .unwrap();
                        continue;
                    }
                    let end = if n.is_multiple_of(4) {
                        JobState::Failed
                    } else {
                        JobState::Succeeded
                    };
                    s.finish_job(&lease, end, None).await.unwrap();
                }
            }));
        }
        for _ in 0..2 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..30 {
                    s.fold_job_counts().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let s = Arc::try_unwrap(s).ok().unwrap();
        // Some failed jobs are retried and one queued job is cancelled, after the storm.
        let failed = s
            .list_jobs(&JobFilter {
                state: Some(JobState::Failed),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!failed.is_empty(), "the storm ended some jobs as failed");
        s.retry_job(failed[0].id).await.unwrap();
        let extra = s
            .create_job(new_job("https://h.example/x.img"))
            .await
            .unwrap();
        s.request_cancel(extra.id).await.unwrap();

        let truth = listed_counts(&s).await;
        assert_eq!(truth.iter().map(|(_, n)| n).sum::<i64>(), 61);
        assert_eq!(s.count_by_state().await.unwrap(), truth, "before folding");
        assert!(s.fold_job_counts().await.unwrap() > 0);
        assert_eq!(s.count_by_state().await.unwrap(), truth, "after folding");
        assert_eq!(
            s.fold_job_counts().await.unwrap(),
            0,
            "nothing left to fold"
        );
        assert_eq!(
            s.count_by_state().await.unwrap(),
            truth,
            "after an empty fold"
        );
    }
);

for_each_backend!(
    a_watch_check_lands_only_with_the_lease_and_the_fingerprint_it_began_from,
    |s: DynStore| async move {
        use vmscan::store::watch::{CheckOutcome, CheckRecord, NewWatch, Recorded, ScanTemplate};
        use vmscan::watch::WatchKind;
        let w = s
            .create_watch(&NewWatch {
                owner: "ann".into(),
                url: "https://h.example/a.raw".into(),
                kind: WatchKind::Url,
                sums_url: None,
                interval_secs: 60,
                template: ScanTemplate {
                    requested_by: Some("ann".into()),
                    email: None,
                    note: None,
                    options: json!({}),
                },
            })
            .await
            .unwrap();
        let far = vmscan::domain::now_millis() + 60_000;
        fn rec<'a>(id: &'a str, fp: &'a str, far: i64) -> CheckRecord<'a> {
            CheckRecord {
                watch_id: id,
                previous: None,
                outcome: CheckOutcome::Changed,
                message: "new image",
                image_url: Some("https://h.example/a.raw"),
                fingerprint: Some(fp),
                etag: None,
                last_modified: None,
                next_check_at: far,
                job: Some(new_job("https://h.example/a.raw")),
            }
        }
        assert!(s
            .acquire_lease("watch-scheduler", "one", far)
            .await
            .unwrap());
        assert!(
            !s.acquire_lease("watch-scheduler", "two", far)
                .await
                .unwrap(),
            "held by one"
        );
        // Not the holder: nothing lands, no job.
        assert_eq!(
            s.record_check("watch-scheduler", "two", far, rec(&w.id, "fp1", far))
                .await
                .unwrap(),
            Recorded::Lost
        );
        // The holder, from the fingerprint the watch has: the check and its scan land together.
        let Recorded::Done { job: Some(job) } = s
            .record_check("watch-scheduler", "one", far, rec(&w.id, "fp1", far))
            .await
            .unwrap()
        else {
            panic!("not recorded")
        };
        assert_eq!(
            s.get_job(job)
                .await
                .unwrap()
                .unwrap()
                .requested_by
                .as_deref(),
            Some("ann@example.com")
        );
        // A second check that began before the first landed (from no fingerprint) is stale.
        assert_eq!(
            s.record_check("watch-scheduler", "one", far, rec(&w.id, "fp1", far))
                .await
                .unwrap(),
            Recorded::Lost
        );
        let got = s.get_watch(&w.id).await.unwrap().unwrap();
        assert_eq!((got.scans, got.checks), (1, 1));
        assert_eq!(
            s.count_by_state().await.unwrap(),
            vec![(JobState::Queued, 1)]
        );
        // Released, the lease is free for another holder.
        s.release_lease("watch-scheduler", "one").await.unwrap();
        assert!(s
            .acquire_lease("watch-scheduler", "two", far)
            .await
            .unwrap());
        assert_eq!(s.watch_checks(&w.id, 10).await.unwrap().len(), 1);
    }
);
