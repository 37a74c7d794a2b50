//! `sluice acls --apply`: creates ACL bindings through Kafka's Admin API (CreateAcls).
//!
//! rust-rdkafka has no ACL calls, so this module calls librdkafka's C API through rdkafka-sys:
//! the only unsafe code outside `plugin/`, fenced here. Every pointer it makes is destroyed
//! here; the client's handle is borrowed from an `AdminClient` that outlives the call.
#![allow(unsafe_code)] // rust-rdkafka exposes no CreateAcls; see the module doc.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::bindings as sys;
use rdkafka::client::DefaultClientContext;
use sluice_spec::acls::{AclBinding, Operation, PatternType, ResourceType};

/// Creates `acls` allowing `principal` from any host, as the client `config` (an admin
/// principal) is allowed to; Kafka keeps bindings that exist already as they are. Returns the
/// first binding the broker refused, with its reason.
pub fn create_acls(
    config: &ClientConfig,
    principal: &str,
    acls: &[AclBinding],
    timeout: Duration,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let rk = admin.inner().native_ptr();
    let c = |s: &str| CString::new(s).map_err(|_| format!("`{s}` holds a NUL byte"));
    let principal_c = c(principal)?;
    let host = c("*")?;
    let mut bindings: Vec<*mut sys::rd_kafka_AclBinding_t> = Vec::with_capacity(acls.len());
    let destroy = |bindings: &mut Vec<*mut sys::rd_kafka_AclBinding_t>| {
        // SAFETY: every pointer came from rd_kafka_AclBinding_new and is destroyed once.
        unsafe { sys::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len()) };
        bindings.clear();
    };
    for acl in acls {
        let name = c(&acl.name)?;
        let mut errstr = [0 as std::ffi::c_char; 512];
        // SAFETY: the strings are NUL-terminated and live across the call (librdkafka copies
        // them); errstr is a writable buffer of the size passed.
        let binding = unsafe {
            sys::rd_kafka_AclBinding_new(
                resource_type(acl.resource),
                name.as_ptr(),
                pattern_type(acl.pattern),
                principal_c.as_ptr(),
                host.as_ptr(),
                operation(acl.operation),
                sys::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if binding.is_null() {
            destroy(&mut bindings);
            // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
            let why = unsafe { CStr::from_ptr(errstr.as_ptr()) };
            return Err(format!("{}: {}", describe(acl), why.to_string_lossy()));
        }
        bindings.push(binding);
    }
    // SAFETY: rk is the admin client's live handle; the queue is destroyed below.
    let queue = unsafe { sys::rd_kafka_queue_new(rk) };
    // SAFETY: bindings are valid; librdkafka copies them, so they are destroyed after the call.
    unsafe {
        sys::rd_kafka_CreateAcls(
            rk,
            bindings.as_mut_ptr(),
            bindings.len(),
            std::ptr::null(),
            queue,
        )
    };
    destroy(&mut bindings);
    // SAFETY: queue is live; the event is destroyed by `outcome` before the queue.
    let event = unsafe { sys::rd_kafka_queue_poll(queue, timeout.as_millis() as i32) };
    let outcome = read_result(event, acls);
    // SAFETY: destroyed once, after its last use.
    unsafe { sys::rd_kafka_queue_destroy(queue) };
    outcome
}

/// Reads and destroys a CreateAcls result event.
fn read_result(event: *mut sys::rd_kafka_event_t, acls: &[AclBinding]) -> Result<(), String> {
    if event.is_null() {
        return Err("the broker did not answer CreateAcls in time: check bootstrap servers and the admin's credentials".into());
    }
    let outcome = (|| {
        // SAFETY: event is a live event; the strings it returns live as long as it does.
        unsafe {
            if sys::rd_kafka_event_error(event)
                != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let why = CStr::from_ptr(sys::rd_kafka_event_error_string(event));
                return Err(format!("CreateAcls failed: {}", why.to_string_lossy()));
            }
            let result = sys::rd_kafka_event_CreateAcls_result(event);
            if result.is_null() {
                return Err("CreateAcls: an unexpected answer".into());
            }
            let mut count = 0usize;
            let results = sys::rd_kafka_CreateAcls_result_acls(result, &mut count);
            for i in 0..count {
                let error = sys::rd_kafka_acl_result_error(*results.add(i));
                if !error.is_null() {
                    let why = CStr::from_ptr(sys::rd_kafka_error_string(error));
                    let which = acls.get(i).map(describe).unwrap_or_default();
                    return Err(format!("{which}: {}", why.to_string_lossy()));
                }
            }
            Ok(())
        }
    })();
    // SAFETY: destroyed once, after the results read from it.
    unsafe { sys::rd_kafka_event_destroy(event) };
    outcome
}

fn describe(acl: &AclBinding) -> String {
    format!(
        "{} on {} `{}` ({})",
        acl.operation,
        acl.resource.kafka(),
        acl.name,
        acl.pattern.kafka()
    )
}

fn resource_type(r: ResourceType) -> sys::rd_kafka_ResourceType_t {
    use sys::rd_kafka_ResourceType_t as T;
    match r {
        ResourceType::Topic => T::RD_KAFKA_RESOURCE_TOPIC,
        ResourceType::Group => T::RD_KAFKA_RESOURCE_GROUP,
        ResourceType::TransactionalId => T::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
    }
}

fn pattern_type(p: PatternType) -> sys::rd_kafka_ResourcePatternType_t {
    use sys::rd_kafka_ResourcePatternType_t as T;
    match p {
        PatternType::Literal => T::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        PatternType::Prefixed => T::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    }
}

fn operation(o: Operation) -> sys::rd_kafka_AclOperation_t {
    use sys::rd_kafka_AclOperation_t as T;
    match o {
        Operation::Read => T::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => T::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Create => T::RD_KAFKA_ACL_OPERATION_CREATE,
    }
}
