//! report-check: asks the inventory system whether the VM has been
//! reported. Inventory takes hours, so between checks the job waits
//! without holding a worker, up to its own deadline.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::teardown::delete_job_vms;
use super::ScanEnv;
use crate::domain::{fmt_duration_ms, fmt_millis, now_millis, StageName};
use crate::inventory::InventoryError;
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no inventory system is configured")]
    NotConfigured,
    #[error("{system} never listed {hostname} within {waited} (checked {checks} times)")]
    NotListed {
        system: String,
        hostname: String,
        waited: String,
        checks: usize,
    },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

impl StageFailure for ReportError {
    fn is_retryable(&self) -> bool {
        matches!(self, ReportError::Inventory(e) if e.is_retryable())
    }
}

pub struct ReportCheckStage {
    env: Arc<ScanEnv>,
}

impl ReportCheckStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        ReportCheckStage { env }
    }
}

#[async_trait]
impl Stage for ReportCheckStage {
    fn name(&self) -> StageName {
        StageName::ReportCheck
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let inventory = self
            .env
            .inventory
            .clone()
            .ok_or(ReportError::NotConfigured)?;
        // Exactly the name vm-create gave the guest (Windows: its computer name).
        let hostname = super::vm::job_hostname(ctx);
        // The first check of this run starts the deadline; earlier checks parked the job.
        let runs = ctx.store().stage_runs(ctx.job.id).await?;
        let earlier: Vec<_> = runs
            .iter()
            .filter(|r| {
                r.stage == StageName::ReportCheck.as_str() && r.attempt >= ctx.job.run_base_attempt
            })
            .collect();
        let first = earlier
            .first()
            .map(|r| r.started_at)
            .unwrap_or_else(now_millis);
        let checks = earlier.len();
        ctx.set_detail(json!({"system": inventory.name(), "hostname": hostname, "check": checks, "first_check": fmt_millis(first)}), true)
            .await?;
        let hits = inventory
            .find_computer(&hostname)
            .await
            .map_err(ReportError::from)?;
        if !hits.is_empty() {
            ctx.info(format!(
                "{} lists {hostname} ({} row(s)) after {}",
                inventory.name(),
                hits.len(),
                fmt_duration_ms(now_millis() - first)
            ))
            .await?;
            ctx.set_detail(json!({"found": true, "found_at": now_millis(), "rows": hits.iter().take(20).map(|h| h.row.clone()).collect::<Vec<_>>()}), true)
                .await?;
            return Ok(StageOutcome::Done);
        }
        let deadline = first + (self.env.inventory_deadline_secs as i64) * 1000;
        let next = now_millis() + (self.env.inventory_interval_secs as i64) * 1000;
        if next > deadline {
            return Err(ReportError::NotListed {
                system: inventory.name(),
                hostname,
                waited: fmt_duration_ms(now_millis() - first),
                checks,
            }
            .into());
        }
        // The VM need not stay up while the inventory catches up, once its upload is confirmed.
        let confirmed = ctx
            .output_of(StageName::LogCheck)
            .and_then(|d| d.get("upload_confirmed"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if confirmed
            && self
                .env
                .agent_for(super::vm::job_os(ctx))
                .is_some_and(|p| p.teardown_before_inventory)
        {
            let deleted = delete_job_vms(ctx, &self.env).await?;
            if deleted > 0 {
                ctx.info(
                    "agent upload confirmed in its logs: VM torn down while waiting for inventory",
                )
                .await?;
            }
        }
        ctx.set_detail(json!({"found": false, "next_check": fmt_millis(next), "deadline": fmt_millis(deadline)}), true)
            .await?;
        Ok(StageOutcome::Park {
            until: next,
            reason: format!(
                "waiting for inventory: {hostname} not listed in {} yet (gives up at {})",
                inventory.name(),
                fmt_millis(deadline)
            ),
        })
    }
}
