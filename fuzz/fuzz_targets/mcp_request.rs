//! MCP requests: a JSON-RPC message's `tools/call` parameters turned into the
//! command line of a tool, which must never pass a flag through an argument.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let params = msg.get("params").cloned().unwrap_or(msg);
    if let Ok(argv) = sluice::daemon::mcp::tool_argv(&params) {
        // Every value a caller gave is a separate argument that is not a flag.
        for (i, a) in argv.iter().enumerate().skip(1) {
            if a.starts_with('-') {
                assert!(argv.get(i + 1).is_some_and(|v| !v.starts_with('-')), "flag {a} without its value: {argv:?}");
            }
        }
    }
});
