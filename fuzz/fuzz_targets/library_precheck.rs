//! The check every plugin library gets before `dlopen`: any bytes must be accepted or refused
//! with one line, never panic; and a file it accepts must keep every loadable segment inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = sluice_runtime::plugin::precheck(data) {
        assert!(!why.contains('\n'), "a refusal is one line: {why}");
    }
});
