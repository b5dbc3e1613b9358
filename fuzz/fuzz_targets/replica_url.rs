//! Replica URLs: every S3 form Litestream accepts (host patterns, access point
//! ARNs, query options), and the scheme dispatch.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let _ = sluice::replica::s3::S3Settings::from_url(url);
    let _ = sluice::replica::s3::S3Settings::from_url(&format!("s3://{url}"));
    let _ = sluice::replica::s3::endpoint_with_scheme(url);
    let _ = sluice::replica::s3::region_from_endpoint(url);
    let _ = sluice::replica::s3::detect_provider(Some(url));
});
