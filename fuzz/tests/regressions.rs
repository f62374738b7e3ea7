//! Every seed (`seeds/<target>/`) and every input that once broke a check
//! (`regressions/<target>/`) through the fuzz targets' checks, on the stable
//! toolchain: a crash the fuzzer found stays fixed once its input is saved
//! under `regressions/`.

use std::path::Path;

fn run(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.file_name().is_some_and(|n| n == ".gitkeep") {
                continue;
            }
            let data = std::fs::read(&path).expect("read input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} broke a check", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "{target}: no seeds");
}

#[test]
fn event_json() {
    run("event_json", bems_fuzz::event_json);
}

#[test]
fn envelope() {
    run("envelope", bems_fuzz::envelope);
}

#[test]
fn sqs_event() {
    run("sqs_event", bems_fuzz::sqs_event);
}

#[test]
fn patterns() {
    run("patterns", bems_fuzz::patterns);
}

#[test]
fn rules() {
    run("rules", bems_fuzz::rules);
}
