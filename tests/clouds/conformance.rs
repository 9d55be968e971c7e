//! The provider conformance suite: what every cluster provider (local QEMU,
//! Nutanix, OpenStack, vSphere) must do, run against each fake cloud.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmscan::cluster::{
    guest_hostname, vm_name, ClusterError, ClusterProvider, ClusterVm, Deadlines, ImageFile, Owned,
    VmSpec,
};
use vmscan::domain::{JobId, OsFamily};

pub fn deadlines(secs: u64) -> Deadlines {
    Deadlines {
        power_on: Duration::from_secs(secs),
        address: Duration::from_secs(secs),
        port_open: Duration::from_secs(secs),
    }
}

pub fn spec(job: JobId, image: vmscan::cluster::ClusterImage) -> VmSpec {
    VmSpec {
        job,
        name: vm_name(job),
        image,
        cpus: 1,
        memory_mib: 256,
        user_data: "#cloud-config\nhostname: conformance\n".into(),
        hostname: guest_hostname(job),
        os: OsFamily::Linux,
        admin_password: None,
        egress: Vec::new(),
    }
}

async fn owned_by(p: &dyn ClusterProvider, job: JobId) -> (Vec<String>, Vec<String>) {
    let mut vms = Vec::new();
    let mut images = Vec::new();
    for o in p.list_owned().await.expect("list_owned") {
        match o {
            Owned::Vm { id, job: j, .. } if j == Some(job) => vms.push(id),
            Owned::Image { id, job: j, .. } if j == Some(job) => images.push(id),
            _ => {}
        }
    }
    (vms, images)
}

/// create → address → retry keeps the name → delete → verify gone (twice:
/// missing counts as done), for a VM and its image.
pub async fn lifecycle(p: &dyn ClusterProvider, image_file: &ImageFile) {
    let job = JobId::new();
    let size = image_file.file_size;
    let last = AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        assert!(done <= total, "progress {done} > {total}");
        last.store(done, Ordering::Relaxed);
    };
    let image = p
        .upload_image(job, image_file, &progress)
        .await
        .expect("upload");
    assert_eq!(image.size, size, "uploaded size");
    assert_eq!(
        image.virtual_size, image_file.virtual_size,
        "the disk's size, as the cluster reports it"
    );
    assert_eq!(
        last.load(Ordering::Relaxed),
        size,
        "progress reaches the end"
    );
    // A retried upload leaves one image for the job.
    let again = p
        .upload_image(job, image_file, &|_, _| {})
        .await
        .expect("upload again");
    let (_, images) = owned_by(p, job).await;
    assert_eq!(
        images,
        vec![again.id.clone()],
        "one image per job after a retry"
    );

    let vm = p
        .create_vm(&spec(job, again.clone()))
        .await
        .expect("create");
    assert_eq!(vm.name, vm_name(job));
    let ready = p.wait_ready(&vm, &deadlines(60)).await.expect("ready");
    assert!(
        ready.host.is_some() && ready.port.is_some(),
        "address: {ready:?}"
    );

    // A retried create (same name) replaces the VM: still one for the job.
    let vm2 = p
        .create_vm(&spec(job, again.clone()))
        .await
        .expect("create again");
    assert_eq!(vm2.name, vm.name, "a retry keeps the VM name");
    let (vms, _) = owned_by(p, job).await;
    assert_eq!(vms, vec![vm2.id.clone()], "one VM per job after a retry");
    p.wait_ready(&vm2, &deadlines(60))
        .await
        .expect("ready after retry");

    p.delete_vm(&vm2.id).await.expect("delete vm");
    p.delete_vm(&vm2.id)
        .await
        .expect("deleting a missing VM is done");
    p.delete_image(&again.id).await.expect("delete image");
    p.delete_image(&again.id)
        .await
        .expect("deleting a missing image is done");
    assert_eq!(owned_by(p, job).await, (vec![], vec![]), "nothing left");
}

/// A VM that never gets an address: the named deadline, then teardown works.
pub async fn teardown_after_no_address(
    p: &dyn ClusterProvider,
    image_file: &ImageFile,
    make_next_vm_addressless: impl FnOnce(),
) {
    teardown_after_deadline(p, image_file, "address", make_next_vm_addressless).await
}

/// As [`teardown_after_no_address`], for a provider whose address wait has
/// its own name (vSphere: "guest IP", what VMware Tools reports).
pub async fn teardown_after_deadline(
    p: &dyn ClusterProvider,
    image_file: &ImageFile,
    deadline: &str,
    make_next_vm_addressless: impl FnOnce(),
) {
    let job = JobId::new();
    let image = p
        .upload_image(job, image_file, &|_, _| {})
        .await
        .expect("upload");
    make_next_vm_addressless();
    let vm: ClusterVm = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect("create");
    let err = p
        .wait_ready(&vm, &deadlines(3))
        .await
        .expect_err("a VM without an address is not ready");
    match &err {
        ClusterError::Deadline { what, .. } => assert_eq!(what, deadline, "{err}"),
        other => panic!("expected the {deadline} deadline, got {other}"),
    }
    let (vms, images) = owned_by(p, job).await;
    assert_eq!(
        (vms.len(), images.len()),
        (1, 1),
        "the janitor can find both"
    );
    p.delete_vm(&vm.id).await.expect("delete");
    p.delete_image(&image.id).await.expect("delete image");
    assert_eq!(owned_by(p, job).await, (vec![], vec![]), "nothing left");
}
