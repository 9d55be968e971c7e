//! The cluster provider on Prism Central's v4 APIs: the same contract as
//! the v3 one (one image and one VM per job, named and tagged with the
//! job, every half-made entity deleted on the way out), with ETag/If-Match
//! on every conditional write and an idempotency key on every mutation.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use tokio::sync::OnceCell;

use super::images::{self, ImageType, NewImage, Sha256Checksum, UrlSource, IMAGES};
use super::infra::{self, Placement};
use super::tasks::entity_of;
use super::vms::{NewVm, Vm, VmParts, VMS, VM_REL};
use super::{V4Client, V4Error};
use crate::cluster::nutanix::{
    check_config, customization, endpoint, provider_name, shell_ready, tag, upload, vm_detail,
    NutanixConfig,
};
use crate::cluster::{
    image_name, job_of_name, ClusterError, ClusterImage, ClusterProvider, ClusterVm, Deadlines,
    ImageFile, Owned, Progress, VmSpec,
};
use crate::domain::JobId;

pub struct V4Provider {
    name: String,
    client: V4Client,
    placement: OnceCell<Placement>,
}

impl V4Provider {
    pub fn new(name: &str, cfg: NutanixConfig) -> Result<V4Provider, ClusterError> {
        let label = provider_name(name);
        check_config(&label, &cfg)?;
        let client =
            V4Client::new(cfg).map_err(|e| ClusterError::Local(format!("{label}: {e}")))?;
        Ok(V4Provider {
            name: label,
            client,
            placement: OnceCell::new(),
        })
    }

    fn cfg(&self) -> &NutanixConfig {
        self.client.cfg()
    }

    fn err(&self, e: V4Error) -> ClusterError {
        ClusterError::Api {
            provider: self.name.clone(),
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }

    fn task_limit(&self) -> Duration {
        Duration::from_secs(self.cfg().task_timeout_secs.max(1))
    }

    async fn placement(&self) -> Result<&Placement, ClusterError> {
        self.placement
            .get_or_try_init(|| async {
                let cfg = self.cfg();
                let category = (!cfg.category_key.is_empty())
                    .then_some((cfg.category_key.as_str(), cfg.category_value.as_str()));
                infra::placement(&self.client, &cfg.cluster_name, &cfg.subnet_name, category)
                    .await
                    .map_err(|e| self.err(e))
            })
            .await
    }

    /// Waits for a task with the usual time limit.
    async fn wait(&self, task: &str) -> Result<super::Task, V4Error> {
        self.client
            .wait_task(task, self.task_limit(), &|_| {})
            .await
    }

    /// Polls `path` until it answers 404 (the delete task may end before
    /// the entity is gone from reads).
    async fn wait_gone(&self, path: &str) -> Result<(), V4Error> {
        let started = Instant::now();
        let poll = Duration::from_millis(self.cfg().task_poll_ms.max(10));
        loop {
            match self.client.get(path).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) if started.elapsed() >= self.task_limit() => {
                    return Err(V4Error::Protocol(format!(
                        "{path} still exists {} s after its delete task succeeded",
                        self.task_limit().as_secs()
                    )))
                }
                Ok(_) => tokio::time::sleep(poll).await,
            }
        }
    }

    /// Deletes an image (no If-Match: the spec does not take one on image
    /// delete) and checks it is gone; missing is done.
    async fn remove_image(&self, ext_id: &str) -> Result<(), V4Error> {
        let path = format!("{IMAGES}/{ext_id}");
        let request_id = super::new_request_id();
        match self
            .client
            .write(Method::DELETE, &path, None, None, &request_id)
            .await
        {
            Ok(data) => {
                let task = super::client::task_reference(&path, data)?;
                self.wait(&task).await?;
            }
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        self.wait_gone(&path).await
    }

    /// Powers the VM off (hard: it is being thrown away), deletes it with
    /// its ETag and checks it is gone; missing at any point is done.
    async fn remove_vm(&self, ext_id: &str) -> Result<(), V4Error> {
        let path = format!("{VMS}/{ext_id}");
        let vm = match self.client.get_as::<Vm>(&path).await {
            Ok((vm, _)) => vm,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if vm.is_on() {
            // Whether Prism deletes a running VM is not documented: off first.
            let off = format!("{path}/$actions/power-off");
            match self
                .client
                .write_conditional(Method::POST, &path, &off, None)
                .await
            {
                Ok(task) => {
                    if let Err(e) = self.wait(&task).await {
                        tracing::warn!(vm = %ext_id, error = %e, "power-off failed; deleting anyway");
                    }
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => {
                    tracing::warn!(vm = %ext_id, error = %e, "power-off failed; deleting anyway")
                }
            }
        }
        match self
            .client
            .write_conditional(Method::DELETE, &path, &path, None)
            .await
        {
            Ok(task) => {
                self.wait(&task).await?;
            }
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        self.wait_gone(&path).await
    }

    /// Deletes every image called `name` (an earlier attempt's, or a
    /// half-made one of a failed create).
    async fn remove_images_named(&self, name: &str) -> Result<(), V4Error> {
        for img in images::named(&self.client, name).await? {
            tracing::info!(image = %img.ext_id, "deleting the image of an earlier or failed attempt");
            self.remove_image(&img.ext_id).await?;
        }
        Ok(())
    }

    async fn remove_vms_named(&self, name: &str) -> Result<(), V4Error> {
        let filter = format!("name eq {}", super::odata_str(name));
        let vms: Vec<Vm> = self.client.list_as(VMS, Some(&filter)).await?;
        for vm in vms.into_iter().filter(|v| v.name == name) {
            tracing::info!(vm = %vm.ext_id, "deleting the VM of an earlier or failed attempt");
            self.remove_vm(&vm.ext_id).await?;
        }
        Ok(())
    }

    async fn upload_once(
        &self,
        job: JobId,
        name: &str,
        image: &ImageFile,
        place: &Placement,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, V4Error> {
        let url = self.cfg().pull_url(job);
        let body = NewImage {
            name,
            kind: if image.is_iso() {
                ImageType::IsoImage
            } else {
                ImageType::DiskImage
            },
            description: tag(job),
            source: UrlSource::new(&url),
            checksum: Sha256Checksum::new(image.sha256()),
            cluster_location_ext_ids: vec![place.cluster.clone()],
            category_ext_ids: place.categories.clone(),
        };
        let size = image.file_size;
        progress(0, size);
        let on_percent = |pct: u64| progress(size * pct / 100, size);
        let (img, held) = images::create(
            &self.client,
            &body,
            upload::upload_timeout(self.cfg(), size),
            self.task_limit(),
            &on_percent,
        )
        .await?;
        // The disk Prism made (a qcow2's virtual size): it must be all of it.
        let want = image.virtual_size;
        if held != want {
            return Err(V4Error::Protocol(format!(
                "Prism Central reports a disk of {held} bytes for the image, vmscan's holds {want} bytes (virtual size)"
            )));
        }
        progress(size, size);
        Ok(ClusterImage {
            id: img.ext_id,
            name: name.to_string(),
            size,
            virtual_size: want,
        })
    }

    async fn create_once(&self, spec: &VmSpec, place: &Placement) -> Result<String, V4Error> {
        let cfg = self.cfg();
        let body = NewVm::new(VmParts {
            name: spec.name.clone(),
            description: tag(spec.job),
            cluster: place.cluster.clone(),
            subnet: place.subnet.clone(),
            image: spec.image.id.clone(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disk_size_mib: cfg.disk_size_mib,
            customization: customization(cfg, spec),
            categories: place.categories.clone(),
        });
        let task_id = self.client.create(VMS, &body).await?;
        let task = self.wait(&task_id).await?;
        let ext_id = entity_of(&task, VM_REL).ok_or_else(|| {
            V4Error::Protocol(format!("VM create task {task_id} names no {VM_REL}"))
        })?;
        // Created off; powered on by its own action, with the VM's ETag.
        let path = format!("{VMS}/{ext_id}");
        let on = format!("{path}/$actions/power-on");
        let task = self
            .client
            .write_conditional(Method::POST, &path, &on, None)
            .await?;
        self.wait(&task).await?;
        Ok(ext_id)
    }
}

/// The job an entity belongs to: by its name, else its description tag.
fn job_of(name: &str, description: Option<&str>) -> Option<JobId> {
    job_of_name(name).or_else(|| {
        description
            .and_then(|d| d.strip_prefix("vmscan job "))
            .and_then(|j| j.parse().ok())
    })
}

#[async_trait]
impl ClusterProvider for V4Provider {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn endpoint(&self) -> Option<String> {
        Some(endpoint(self.cfg()))
    }

    async fn upload_image(
        &self,
        job: JobId,
        image: &ImageFile,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        let name = image_name(job);
        // One image per job: an earlier attempt's goes first.
        self.remove_images_named(&name)
            .await
            .map_err(|e| self.err(e))?;
        let place = self.placement().await?;
        let attempts = self.cfg().max_attempts.max(1);
        let mut delay = Duration::from_millis(self.cfg().retry_backoff_ms.max(1));
        let mut attempt = 1;
        loop {
            let e = match self.upload_once(job, &name, image, place, progress).await {
                Ok(img) => return Ok(img),
                Err(e) => e,
            };
            // Whatever the failed attempt made goes, before a retry or the error.
            if let Err(d) = self.remove_images_named(&name).await {
                tracing::warn!(error = %d, "could not delete a failed upload's image");
            }
            if !e.is_retryable() || attempt >= attempts {
                // Prism may quote the source URL: its pull key stays out of the job.
                let pull = self.cfg().pull_url(job);
                let key = pull.rsplit_once("key=").map(|(_, k)| k).unwrap_or("");
                let mut message = format!("image upload (attempt {attempt} of {attempts}): {e}");
                if !key.is_empty() {
                    message = message.replace(key, "(the job's pull key)");
                }
                return Err(ClusterError::Api {
                    provider: self.name.clone(),
                    retryable: e.is_retryable(),
                    message,
                });
            }
            tracing::warn!(error = %e, attempt, "image upload failed; retrying with a new image");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        let place = self.placement().await?.clone();
        // A retry replaces the VM an earlier attempt created.
        self.remove_vms_named(&spec.name)
            .await
            .map_err(|e| self.err(e))?;
        match self.create_once(spec, &place).await {
            Ok(id) => Ok(ClusterVm {
                id,
                name: spec.name.clone(),
                host: None,
                port: None,
                detail: vm_detail(self.cfg(), spec),
            }),
            Err(e) => {
                // A half-made VM (failed task, failed power-on) goes now.
                if let Err(d) = self.remove_vms_named(&spec.name).await {
                    tracing::warn!(error = %d, "could not delete a failed create's VM");
                }
                Err(self.err(e))
            }
        }
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        let poll = Duration::from_millis(self.cfg().vm_poll_ms.max(10));
        let path = format!("{VMS}/{}", vm.id);
        let deadline = |what: &str, d: Duration| ClusterError::Deadline {
            what: what.into(),
            secs: d.as_secs(),
            console_tail: None,
        };
        let start = Instant::now();
        let ip = loop {
            let (v, _) = self
                .client
                .get_as::<Vm>(&path)
                .await
                .map_err(|e| self.err(e))?;
            if !v.is_on() && start.elapsed() >= deadlines.power_on {
                return Err(deadline("power-on", deadlines.power_on));
            }
            if v.is_on() {
                if let Some(ip) = v.address() {
                    break ip;
                }
                if start.elapsed() >= deadlines.power_on + deadlines.address {
                    return Err(deadline("address", deadlines.address));
                }
            }
            tokio::time::sleep(poll).await;
        };
        shell_ready(self.cfg(), vm, ip, deadlines, poll).await
    }

    async fn console_tail(&self, _vm: &ClusterVm, _max_bytes: usize) -> Option<String> {
        // No serial console in the v4 REST APIs either.
        None
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        self.remove_vm(vm_id).await.map_err(|e| self.err(e))
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        self.remove_image(image_id).await.map_err(|e| self.err(e))
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        let vms: Vec<Vm> = self
            .client
            .list_as(VMS, None)
            .await
            .map_err(|e| self.err(e))?;
        let imgs: Vec<images::Image> = self
            .client
            .list_as(IMAGES, None)
            .await
            .map_err(|e| self.err(e))?;
        let mut out: Vec<Owned> = vms
            .into_iter()
            .filter(|v| v.name.starts_with("vmscan-"))
            .map(|v| Owned::Vm {
                job: job_of(&v.name, v.description.as_deref()),
                id: v.ext_id,
                name: v.name,
            })
            .collect();
        out.extend(
            imgs.into_iter()
                .filter(|i| i.name.starts_with("vmscan-img-"))
                .map(|i| Owned::Image {
                    job: job_of(&i.name, i.description.as_deref()),
                    id: i.ext_id,
                    name: i.name,
                }),
        );
        Ok(out)
    }
}
