//! The host's checks of what a library's entry point returns (`PluginRef::new`): ABI version,
//! table size, NULL entries, non-UTF-8 strings, declared outputs. The fuzzer builds the
//! descriptor and table a malformed library could hand over; the checks must refuse or accept
//! it without reading anything the table's size does not cover.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_plugin_api::abi::{self, Descriptor, OpenContext, PluginVTable, Str};
use sluice_plugin_api::host::{NoOutputs, PluginRef};

unsafe extern "C" fn open(
    _: Str<'_>,
    _: *const OpenContext<'_>,
    _: *const abi::Host,
    instance: *mut *mut std::ffi::c_void,
) -> abi::Status {
    // SAFETY: the host passes a valid out-slot.
    unsafe { *instance = std::ptr::dangling_mut() };
    abi::STATUS_OK
}
unsafe extern "C" fn process(
    _: *mut std::ffi::c_void,
    _: abi::Slice<'_, abi::Event<'_>>,
    _: *const abi::Host,
) -> abi::Status {
    abi::STATUS_OK
}
unsafe extern "C" fn close(_: *mut std::ffi::c_void, _: *const abi::Host) -> abi::Status {
    abi::STATUS_OK
}

static NAMES: [&str; 4] = ["out", "audit", "", "late"];
static BAD: [u8; 2] = [0xff, 0xfe];

unsafe extern "C" fn output_name(index: usize) -> Str<'static> {
    NAMES.get(index).map_or(Str::EMPTY, |n| Str::new(n))
}

fuzz_target!(|data: &[u8]| {
    let bit = |i: usize| data.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1);
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let bad_str = || {
        // SAFETY: `Str` is `repr(C)` around exactly a byte slice (the header's sluice_str); a C
        // library can hand over any bytes, and the host must refuse these as non-UTF-8.
        unsafe { std::mem::transmute::<abi::Bytes<'static>, Str<'static>>(abi::Slice::new(&BAD)) }
    };
    // The table: any size up to the full one (never beyond: that is the library's promise).
    let full = std::mem::size_of::<PluginVTable>();
    let size = (usize::from(byte(2)) * 8).min(full);
    // On the stack, not leaked: nothing below keeps a reference past this input (the host's
    // 'static contract stands for a library that is never unloaded; here the borrow ends first).
    let vtable = PluginVTable {
        size,
        open: bit(24).then_some(open as abi::OpenFn),
        process: bit(25).then_some(process as abi::ProcessFn),
        assigned: None,
        revoked: None,
        flush: None,
        close: bit(26).then_some(close as abi::InstanceFn),
        output_name: bit(27).then_some(output_name as abi::OutputNameFn),
    };
    let descriptor = Descriptor {
        abi_major: u32::from(byte(0) % 3),
        abi_minor: u32::from(byte(1)),
        name: if bit(28) { bad_str() } else { Str::new("fuzz") },
        version: Str::new("0.0.0"),
        description: if bit(29) { bad_str() } else { Str::EMPTY },
        config_schema: if bit(30) { Str::new("{") } else { Str::EMPTY },
        vtable: if bit(31) { std::ptr::null() } else { &vtable },
        layout: std::ptr::null(),
    };
    // SAFETY: valid for every use below; the PluginRef and any instance end with this input.
    match unsafe { PluginRef::new(&descriptor) } {
        Err(err) => assert!(!err.to_string().contains('\n')),
        Ok(plugin) => {
            let _ = plugin.declared_outputs();
            let _ = plugin.config_schema();
            let ctx = OpenContext::new("fuzz", 0, 1);
            if let Ok(instance) = plugin.open("{}", &ctx, &mut NoOutputs) {
                let _ = instance.close(&mut NoOutputs);
            }
        }
    }
});
