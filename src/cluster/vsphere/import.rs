//! The image as an OVF import: qemu-img makes a streamOptimized VMDK,
//! `OvfManager.CreateImportSpec` turns a one-disk OVF descriptor into an
//! import spec, `ResourcePool.ImportVApp` gives an `HttpNfcLease`, the disk
//! is POSTed to the lease's device URL while `HttpNfcLeaseProgress` keeps the
//! lease alive, then `HttpNfcLeaseComplete` (or `HttpNfcLeaseAbort`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use secrecy::ExposeSecret;

use super::client::Client;
use super::inventory::Inventory;
use super::soap::{Fault, MoRef, VsError};
use super::xml::{el, escape, Element};
use crate::cluster::{ImageFile, Progress};

/// The disk's file name inside the OVF.
const DISK_FILE: &str = "disk.vmdk";

/// Converts `image` to a streamOptimized VMDK at `out` (what an OVF carries).
pub async fn to_stream_vmdk(qemu_img: &Path, image: &ImageFile, out: &Path) -> Result<(), VsError> {
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.arg("convert").arg("-q");
    if let Some(driver) = image.format.qemu_driver() {
        cmd.args(["-f", driver]);
    }
    cmd.args(["-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(&image.path)
        .arg(out)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let o = cmd
        .output()
        .await
        .map_err(|e| VsError::Other(format!("{}: {e}", qemu_img.display())))?;
    if !o.status.success() {
        return Err(VsError::Other(format!(
            "qemu-img convert to a streamOptimized VMDK failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(())
}

/// A one-disk OVF 1.0 descriptor as ovftool writes them: `capacity` bytes
/// of disk from the `size`-byte streamOptimized `disk.vmdk`.
pub fn descriptor(
    name: &str,
    guest_id: &str,
    controller: &str,
    size: u64,
    capacity: u64,
) -> String {
    let name = escape(name);
    let guest_id = escape(guest_id);
    let controller = escape(controller);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References><File ovf:id="file1" ovf:href="{DISK_FILE}" ovf:size="{size}"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="{name}"><Info>A virtual machine</Info><Name>{name}</Name>
    <OperatingSystemSection ovf:id="1" vmw:osType="{guest_id}"><Info>The guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:Description>Number of Virtual CPUs</rasd:Description><rasd:ElementName>1 virtual CPU(s)</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:Description>Memory Size</rasd:Description><rasd:ElementName>1024MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Description>SCSI Controller</rasd:Description><rasd:ElementName>SCSI Controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>{controller}</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard Disk 1</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// A lease's device URL with vCenter's `*` host replaced by the SDK's
/// scheme and host (what govmomi's `soap.Client.ParseURL` does).
pub fn device_url(sdk: &url::Url, raw: &str) -> Result<url::Url, VsError> {
    let mut u =
        url::Url::parse(raw).map_err(|e| VsError::Other(format!("lease URL {raw:?}: {e}")))?;
    if u.host_str() == Some("*") {
        let path = u.path().to_string();
        let query = u.query().map(str::to_string);
        u = sdk.clone();
        u.set_path(&path);
        u.set_query(query.as_deref());
    }
    Ok(u)
}

/// Imports `image` as the VM `name` into the inventory: the VM's reference.
pub async fn import(
    c: &Client,
    inv: &Inventory,
    name: &str,
    image: &ImageFile,
    progress: Progress<'_>,
) -> Result<MoRef, VsError> {
    let cfg = c.cfg.clone();
    let vmdk = PathBuf::from(format!("{}.stream.vmdk", image.path.display()));
    let _cleanup = RemoveOnDrop(vmdk.clone());
    to_stream_vmdk(&cfg.qemu_img, image, &vmdk).await?;
    let size = tokio::fs::metadata(&vmdk)
        .await
        .map_err(|e| VsError::Other(format!("{}: {e}", vmdk.display())))?
        .len();

    let ovf = descriptor(
        name,
        &cfg.linux_guest_id,
        &cfg.scsi_controller,
        size,
        image.virtual_size,
    );
    let om = c.content().await?.ovf_manager.clone();
    let r = c
        .call(
            "CreateImportSpec",
            &om,
            &format!(
                "{}{}{}<cisp><locale></locale><deploymentOption></deploymentOption>{}</cisp>",
                el("ovfDescriptor", &ovf),
                inv.pool.el("resourcePool"),
                inv.datastore.el("datastore"),
                el("entityName", name),
            ),
        )
        .await?;
    let result = r
        .child("returnval")
        .ok_or_else(|| VsError::Other("CreateImportSpec: no result".into()))?;
    if let Some(e) = result.child("error") {
        return Err(VsError::Task {
            what: "CreateImportSpec".into(),
            fault: Fault::from_localized(e),
        });
    }
    let spec = result
        .child("importSpec")
        .ok_or_else(|| VsError::Other("CreateImportSpec: no import spec".into()))?;
    let item = result
        .children("fileItem")
        .find(|f| f.text_at("path") == DISK_FILE)
        .ok_or_else(|| VsError::Other("CreateImportSpec: the disk has no file item".into()))?;
    let device_id = item.text_at("deviceId");

    let mut args = String::new();
    spec.write_as("spec", &mut args);
    args.push_str(&inv.folder.el("folder"));
    let r = c.call("ImportVApp", &inv.pool, &args).await?;
    let lease = r
        .child("returnval")
        .and_then(MoRef::from_element)
        .ok_or_else(|| VsError::Other("ImportVApp: no lease".into()))?;

    let info = match wait_ready(c, &lease).await {
        Ok(i) => i,
        Err(e) => {
            abort(c, &lease).await;
            return Err(e);
        }
    };
    let vm = info.child("entity").and_then(MoRef::from_element);
    let done = async {
        let url = info
            .children("deviceUrl")
            .find(|d| d.text_at("importKey") == device_id)
            .map(|d| d.text_at("url"))
            .ok_or_else(|| VsError::Other(format!("the lease has no URL for {device_id}")))?;
        let url = device_url(&c.sdk, &url)?;
        upload(c, &lease, &url, &vmdk, size, image.file_size, progress).await?;
        c.call("HttpNfcLeaseComplete", &lease, "").await?;
        vm.clone()
            .ok_or_else(|| VsError::Other("the lease names no VM".into()))
    }
    .await;
    match done {
        Ok(vm) => Ok(vm),
        Err(e) => {
            abort(c, &lease).await;
            // The half-imported VM goes with the lease on vCenter; make sure.
            if let Some(vm) = vm {
                if let Err(e) = c
                    .run_task("Destroy_Task", &vm, "", "destroying the half-imported VM")
                    .await
                {
                    if !e.is_gone() {
                        tracing::warn!("vSphere: {e}");
                    }
                }
            }
            Err(e)
        }
    }
}

async fn abort(c: &Client, lease: &MoRef) {
    if let Err(e) = c.call("HttpNfcLeaseAbort", lease, "").await {
        tracing::warn!("vSphere HttpNfcLeaseAbort: {e}");
    }
}

/// Waits for the lease to be `ready`: its `info` (device URLs, the VM).
async fn wait_ready(c: &Client, lease: &MoRef) -> Result<Element, VsError> {
    let start = Instant::now();
    let limit = Duration::from_secs(c.cfg.task_timeout_secs.max(1));
    loop {
        let o = c.properties(lease, &["state", "error", "info"]).await?;
        match o.text("state").as_str() {
            "ready" => {
                return o
                    .props
                    .get("info")
                    .cloned()
                    .ok_or_else(|| VsError::Other("the lease is ready without info".into()))
            }
            "error" => {
                return Err(VsError::Task {
                    what: "ImportVApp".into(),
                    fault: o
                        .props
                        .get("error")
                        .map(Fault::from_localized)
                        .unwrap_or(Fault {
                            kind: "unknown".into(),
                            message: String::new(),
                        }),
                })
            }
            _ => {}
        }
        if start.elapsed() > limit {
            return Err(VsError::TaskTimeout {
                what: "the import lease".into(),
                secs: limit.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(c.cfg.poll_ms.max(10))).await;
    }
}

/// POSTs the VMDK to the lease's URL, reporting progress in bytes of the
/// image file (`shown_total`) and keeping the lease alive.
async fn upload(
    c: &Client,
    lease: &MoRef,
    url: &url::Url,
    vmdk: &Path,
    size: u64,
    shown_total: u64,
    progress: Progress<'_>,
) -> Result<(), VsError> {
    let file = tokio::fs::File::open(vmdk)
        .await
        .map_err(|e| VsError::Other(format!("{}: {e}", vmdk.display())))?;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
        if let Ok(b) = &chunk {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let limit =
        Duration::from_secs(c.cfg.upload_base_secs + size / c.cfg.upload_min_bytes_per_sec.max(1));
    // The transfer begins: also checks that the lease takes progress
    // reports before any byte is sent.
    c.call("HttpNfcLeaseProgress", lease, "<percent>0</percent>")
        .await?;
    let cookie = c.cookie().await?;
    let req = c
        .http
        .post(url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-vnd.vmware-streamVmdk",
        )
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header(reqwest::header::COOKIE, cookie.expose_secret())
        .timeout(limit)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tokio::pin!(req);
    let shown = |n: u64| {
        if size == 0 {
            shown_total
        } else {
            (u128::from(n.min(size)) * u128::from(shown_total) / u128::from(size)) as u64
        }
    };
    let mut keep_alive =
        tokio::time::interval(Duration::from_secs(c.cfg.lease_progress_secs.max(1)));
    keep_alive.tick().await;
    let mut report = tokio::time::interval(Duration::from_millis(250));
    let resp = loop {
        tokio::select! {
            r = &mut req => break r,
            _ = report.tick() => progress(shown(sent.load(Ordering::Relaxed)), shown_total),
            _ = keep_alive.tick() => {
                let pct = sent.load(Ordering::Relaxed) * 100 / size.max(1);
                let pct = pct.min(99);
                if let Err(e) = c.call("HttpNfcLeaseProgress", lease, &format!("<percent>{pct}</percent>")).await {
                    tracing::warn!("vSphere HttpNfcLeaseProgress: {e}");
                }
            }
        }
    };
    let resp = resp.map_err(|e| VsError::Transport {
        method: format!("upload to {}", url.path()),
        message: describe(&e),
        retry: true,
    })?;
    let status = resp.status();
    if !status.is_success() {
        let text = crate::bounded_body::text(resp, 64 * 1024)
            .await
            .unwrap_or_default();
        return Err(VsError::Http {
            method: format!("upload to {}", url.path()),
            status: status.as_u16(),
            message: text.chars().take(200).collect(),
        });
    }
    let n = sent.load(Ordering::Relaxed);
    if n != size {
        return Err(VsError::Other(format!(
            "upload to {}: sent {n} of {size} bytes",
            url.path()
        )));
    }
    progress(shown_total, shown_total);
    Ok(())
}

fn describe(e: &reqwest::Error) -> String {
    let head = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    crate::domain::with_causes(head, e)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_host_becomes_the_sdks() {
        let sdk = url::Url::parse("http://127.0.0.1:8989/sdk").unwrap();
        let u = device_url(&sdk, "https://*/nfc/52a1/disk-0.vmdk").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8989/nfc/52a1/disk-0.vmdk");
        let u = device_url(&sdk, "https://esx1.example.com/nfc/x/disk-0.vmdk").unwrap();
        assert_eq!(u.host_str(), Some("esx1.example.com"));
    }

    #[test]
    fn the_descriptor_escapes_names_and_carries_the_sizes() {
        let d = descriptor("vmscan-img-<x>", "otherLinux64Guest", "lsilogic", 10, 4096);
        assert!(d.contains("vmscan-img-&lt;x&gt;"));
        assert!(d.contains(r#"ovf:size="10""#) && d.contains(r#"ovf:capacity="4096""#));
        assert!(roxmltree::Document::parse(&d).is_ok());
    }
}
