//! Real clusters against faithful fakes of their APIs: Nutanix Prism
//! Central (v3 and v4) and OpenStack (Keystone, Glance, Nova, Neutron). Each
//! provider passes the same conformance suite, then the failure paths those
//! APIs really produce, then a whole scan with a real guest behind the fake.

mod support;

#[path = "clouds/conformance.rs"]
mod conformance;

#[path = "clouds/nutanix.rs"]
mod nutanix;

#[path = "clouds/nutanix_v4.rs"]
mod nutanix_v4;

#[path = "clouds/openstack.rs"]
mod openstack;
