//! `cloud-init schema --config-file` accepts every rendered document.
//!
//! The shared field cases first show that the checker can say no: the two files
//! that Debian's cloud-init 22.4.2 rejects must be rejected here too.

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::support::{cases_dir, cloud_init_available, cloud_init_schema, fixtures, valid_boot};

#[test]
fn checker_agrees_with_the_recorded_verdicts_on_field_cases() {
    if !cloud_init_available() {
        return;
    }
    let check = |file: &str, valid: bool| {
        let text = std::fs::read_to_string(cases_dir().join(file)).expect("case file");
        let verdict = cloud_init_schema(&text);
        assert_eq!(verdict.is_ok(), valid, "{file}: {verdict:?}");
    };
    check("hetzner-community__basic-cloud-config.yaml", true);
    check("hetzner-community__how-to-set-up-vaultwarden.yaml", true);
    check(
        "cloud-init-22.4.2-debian-examples__cloud-config-run-cmds.yaml",
        true,
    );
    check(
        "cloud-init-22.4.2-debian-examples__cloud-config-write-files.yaml",
        true,
    );
    check(
        "hetzner-community__debian-base-configuration-docker.yaml",
        false,
    );
    check(
        "hetzner-community__setup-your-own-scalable-kubernetes-cluster-worker.yaml",
        false,
    );
}

#[test]
fn cloud_init_accepts_every_fixture() {
    if !cloud_init_available() {
        return;
    }
    for (name, boot) in fixtures() {
        let user_data = boot.render().unwrap();
        if let Err(output) = cloud_init_schema(user_data.expose()) {
            panic!("cloud-init rejected {name}:\n{output}");
        }
    }
}

#[test]
fn cloud_init_accepts_a_sample_of_valid_inputs() {
    if !cloud_init_available() {
        return;
    }
    // Each case starts a cloud-init process (about a second), so the sample is small.
    let mut runner = proptest::test_runner::TestRunner::new(Config::with_cases(12));
    runner
        .run(&valid_boot(), |boot| {
            let user_data = boot.render().unwrap();
            let verdict = cloud_init_schema(user_data.expose());
            prop_assert!(verdict.is_ok(), "{:?}", verdict);
            Ok(())
        })
        .unwrap();
}
