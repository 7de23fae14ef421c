//! Layering, unknown keys and validation of the configuration.

// figment::Jail closures return figment::Error, large by the crate's design.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use dietstream_runtime::store::StateEncoding;
use figment::Jail;

use super::*;

/// Runs `test` in a figment jail (own working directory, environment restored afterwards)
/// with the outer environment cleared: `make test` exports the stack's DIETSTREAM_* addresses.
fn jailed(test: impl FnOnce(&mut Jail) -> figment::error::Result<()>) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        test(jail)
    });
}

fn load_in_jail(file: Option<&str>) -> Result<Config, ConfigError> {
    Config::load(file.map(Path::new))
}

#[test]
fn defaults_point_at_the_local_stack_and_are_valid() {
    let config = Config::default();
    assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(config.cql.contact_points, vec!["127.0.0.1:9042"]);
    assert_eq!(
        config.schema_registry.url,
        "http://127.0.0.1:8081/apis/ccompat/v7"
    );
    assert_eq!(config.validate(), Vec::new());
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    jailed(|jail| {
        jail.create_file(
            "dietstream.toml",
            r#"
            [kafka]
            bootstrap_servers = "broker-a:9092,broker-b:9092"
            request_timeout = "5s"
            [kafka.librdkafka_options]
            "security.protocol" = "SASL_SSL"
            [cql]
            keyspace = "from_file"
            "#,
        )?;
        jail.set_env("DIETSTREAM_CQL__KEYSPACE", "from_env");
        jail.set_env("DIETSTREAM_SCHEMA_REGISTRY__TIMEOUT", "250ms");
        let config = load_in_jail(Some("dietstream.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            config.kafka.bootstrap_servers,
            "broker-a:9092,broker-b:9092"
        );
        assert_eq!(config.kafka.request_timeout, Duration::from_secs(5));
        assert_eq!(
            config.kafka.librdkafka_options.get("security.protocol"),
            Some(&"SASL_SSL".to_owned())
        );
        assert_eq!(config.cql.keyspace, "from_env");
        assert_eq!(config.schema_registry.timeout, Duration::from_millis(250));
        // Untouched settings keep their defaults.
        assert_eq!(config.cql.contact_points, vec!["127.0.0.1:9042"]);
        Ok(())
    });
}

#[test]
fn unknown_key_in_file_is_named() {
    jailed(|jail| {
        jail.create_file("dietstream.toml", "[kafka]\nbootstrap_server = \"x:1\"\n")?;
        let err = load_in_jail(Some("dietstream.toml")).expect_err("unknown key accepted");
        let message = err.to_string();
        assert!(message.contains("bootstrap_server"), "{message}");
        assert!(message.contains("kafka"), "{message}");
        assert!(message.contains("dietstream.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn unknown_environment_variable_is_named() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_CQL__KEY_SPACE", "typo");
        let err = load_in_jail(None).expect_err("unknown variable accepted");
        let message = err.to_string();
        assert!(message.contains("key_space"), "{message}");
        assert!(message.contains("DIETSTREAM_CQL__KEY_SPACE"), "{message}");
        Ok(())
    });
}

#[test]
fn contact_points_accept_a_comma_separated_variable() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_CQL__CONTACT_POINTS", "node-a:9042, node-b:9042");
        let config = load_in_jail(None).map_err(|e| e.to_string())?;
        assert_eq!(
            config.cql.contact_points,
            vec!["node-a:9042", "node-b:9042"]
        );
        Ok(())
    });
}

#[test]
fn config_file_variable_is_not_a_setting() {
    jailed(|jail| {
        jail.set_env(CONFIG_FILE_ENV, "somewhere.toml");
        assert!(load_in_jail(None).is_ok());
        Ok(())
    });
}

#[test]
fn wrongly_typed_value_is_named_with_its_source() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_KAFKA__REQUEST_TIMEOUT", "soon");
        let err = load_in_jail(None).expect_err("bad duration accepted");
        let message = err.to_string();
        assert!(message.contains("request_timeout"), "{message}");
        assert!(
            message.contains("DIETSTREAM_KAFKA__REQUEST_TIMEOUT"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn missing_config_file_is_an_error() {
    let err = Config::load(Some(Path::new("/nonexistent/dietstream.toml")))
        .expect_err("missing file accepted");
    assert!(matches!(err, ConfigError::FileMissing(_)));
    assert!(err.to_string().contains("/nonexistent/dietstream.toml"));
}

#[test]
fn every_invalid_value_is_reported_at_once() {
    jailed(|jail| {
        jail.create_file(
            "dietstream.toml",
            r#"
            [kafka]
            bootstrap_servers = "broker-a"
            [kafka.librdkafka_options]
            "bootstrap.servers" = "elsewhere:9092"
            [schema_registry]
            url = "ftp://registry"
            username = "svc"
            [cql]
            contact_points = ["node:99999"]
            keyspace = "9lives"
            replication_factor = 0
            "#,
        )?;
        let err = load_in_jail(Some("dietstream.toml")).expect_err("invalid values accepted");
        let ConfigError::Invalid(invalid) = &err else {
            panic!("expected validation errors, got {err}");
        };
        let settings: Vec<&str> = invalid.iter().map(|i| i.setting.as_str()).collect();
        assert_eq!(
            settings,
            vec![
                "kafka.bootstrap_servers",
                "kafka.librdkafka_options.bootstrap.servers",
                "schema_registry.url",
                "schema_registry.password",
                "cql.contact_points",
                "cql.keyspace",
                "cql.replication_factor",
            ]
        );
        let message = err.to_string();
        assert_eq!(message.lines().count(), invalid.len(), "{message}");
        Ok(())
    });
}

#[test]
fn tls_files_must_exist_and_certificate_needs_its_key() {
    let mut config = Config::default();
    config.cql.tls = Some(CqlTlsConfig {
        ca_file: "/nonexistent/ca.pem".into(),
        cert_file: Some("/nonexistent/client.pem".into()),
        key_file: None,
        verify_hostname: true,
    });
    let settings: Vec<String> = config.validate().into_iter().map(|i| i.setting).collect();
    assert_eq!(
        settings,
        vec!["cql.tls.ca_file", "cql.tls.cert_file", "cql.tls.key_file"]
    );
}

#[test]
fn redacted_copy_hides_every_secret() {
    let mut config = Config::default();
    config.schema_registry.username = Some("svc".into());
    config.schema_registry.password = Some("registry-secret".into());
    config.cql.username = Some("analyst".into());
    config.cql.password = Some("cql-secret".into());
    config
        .kafka
        .librdkafka_options
        .insert("sasl.password".into(), "kafka-secret".into());
    config
        .kafka
        .librdkafka_options
        .insert("sasl.username".into(), "svc".into());
    let printed = config.to_redacted_toml().expect("serializable");
    for secret in ["registry-secret", "cql-secret", "kafka-secret"] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
    }
    assert!(printed.contains("analyst"), "{printed}");
    // The printed form is itself a valid config file that loads back to the redacted copy.
    let reparsed: Config = toml::from_str(&printed).expect("printed config parses");
    assert_eq!(reparsed, config.redacted());
}

#[test]
fn host_port_and_identifier_checks() {
    assert!(check_host_port("localhost:9092").is_ok());
    assert!(check_host_port("[::1]:9042").is_ok());
    assert!(check_host_port("localhost").is_err());
    assert!(check_host_port(":9092").is_err());
    assert!(check_host_port("host:0").is_err());
    assert!(is_cql_identifier("dietstream_test_1"));
    assert!(!is_cql_identifier("_x"));
    assert!(!is_cql_identifier("has-dash"));
    assert!(!is_cql_identifier(&"k".repeat(49)));
}

#[test]
fn topology_defaults_to_the_local_profile_without_prefix() {
    let topology = Config::default().topology;
    assert_eq!(topology.profile, Profile::Local);
    assert_eq!(topology.prefix, "");
}

#[test]
fn topology_profile_and_prefix_come_from_file_and_environment() {
    jailed(|jail| {
        jail.create_file(
            "dietstream.toml",
            "[topology]\nprofile = \"production\"\nprefix = \"from_file\"\n",
        )?;
        jail.set_env("DIETSTREAM_TOPOLOGY__PREFIX", "staging-2");
        let config = load_in_jail(Some("dietstream.toml")).map_err(|e| e.to_string())?;
        assert_eq!(config.topology.profile, Profile::Production);
        assert_eq!(config.topology.prefix, "staging-2");
        Ok(())
    });
}

#[test]
fn unknown_topology_profile_is_named_with_its_source() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_TOPOLOGY__PROFILE", "prod");
        let err = load_in_jail(None).expect_err("unknown profile accepted");
        let message = err.to_string();
        assert!(message.contains("topology.profile"), "{message}");
        assert!(
            message.contains("DIETSTREAM_TOPOLOGY__PROFILE"),
            "{message}"
        );
        assert!(message.contains("production"), "{message}");
        Ok(())
    });
}

#[test]
fn unknown_key_in_topology_section_is_named() {
    jailed(|jail| {
        jail.create_file("dietstream.toml", "[topology]\nprefx = \"x\"\n")?;
        let err = load_in_jail(Some("dietstream.toml")).expect_err("unknown key accepted");
        let message = err.to_string();
        assert!(message.contains("topology.prefx"), "{message}");
        Ok(())
    });
}

#[test]
fn topology_prefix_must_fit_in_front_of_topic_names() {
    for prefix in ["staging.", "team/a", "ümlaut"] {
        let mut config = Config::default();
        config.topology.prefix = prefix.to_owned();
        let invalid = config.validate();
        assert_eq!(invalid.len(), 1, "{prefix}: {invalid:?}");
        assert_eq!(invalid[0].setting, "topology.prefix");
        assert!(invalid[0].reason.contains(prefix), "{}", invalid[0]);
    }
    let mut config = Config::default();
    config.topology.prefix = "it_t_1f_0a1b2c3d_7".to_owned();
    assert_eq!(config.validate(), Vec::new());
}

#[test]
fn the_generation_check_interval_is_read_and_must_be_above_zero() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_PROCESSORS__GENERATION_CHECK_INTERVAL", "750ms");
        let config = load_in_jail(None).expect("valid");
        assert_eq!(
            config.processors.generation_check_interval,
            Duration::from_millis(750)
        );
        jail.set_env("DIETSTREAM_PROCESSORS__GENERATION_CHECK_INTERVAL", "0s");
        let err = load_in_jail(None).expect_err("zero accepted");
        assert!(
            err.to_string()
                .contains("processors.generation_check_interval: must be above zero"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn the_state_encoding_is_compact_unless_set_to_json() {
    jailed(|jail| {
        let config = load_in_jail(None).expect("valid");
        assert_eq!(config.processors.state_encoding, StateEncoding::Compact);
        jail.set_env("DIETSTREAM_PROCESSORS__STATE_ENCODING", "json");
        let config = load_in_jail(None).expect("valid");
        assert_eq!(config.processors.state_encoding, StateEncoding::Json);
        jail.set_env("DIETSTREAM_PROCESSORS__STATE_ENCODING", "xml");
        let err = load_in_jail(None).expect_err("xml accepted");
        assert!(err.to_string().contains("state_encoding"), "{err}");
        Ok(())
    });
}

#[test]
fn the_flush_interval_is_read_may_be_zero_and_is_bounded() {
    jailed(|jail| {
        jail.set_env("DIETSTREAM_PROCESSORS__FLUSH_INTERVAL", "0s");
        let config = load_in_jail(None).expect("zero is valid: no waiting");
        assert_eq!(config.processors.flush_interval, Duration::ZERO);
        jail.set_env("DIETSTREAM_PROCESSORS__FLUSH_INTERVAL", "120ms");
        let config = load_in_jail(None).expect("valid");
        assert_eq!(config.processors.flush_interval, Duration::from_millis(120));
        jail.set_env("DIETSTREAM_PROCESSORS__FLUSH_INTERVAL", "11s");
        let err = load_in_jail(None).expect_err("11 s accepted");
        assert!(
            err.to_string()
                .contains("processors.flush_interval: must be at most 10s"),
            "{err}"
        );
        Ok(())
    });
}
