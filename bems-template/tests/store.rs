//! The PostgreSQL store in the cell template: what each `Store` and
//! network choice creates (the conditions evaluated as CloudFormation
//! would), the cluster's encryption, TLS, authentication and deletion
//! policies, and the writer's login, grants, network and trust. What only
//! AWS can show (the IAM evaluation of `rds-db:connect`, a deployment) is
//! in `infra/README.md` with its commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use bems_core::contract::{DB_WRITER, env};
use serde_json::{Value, json};

fn cell() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/cells/prod-eu-1/cell.json");
    serde_json::from_str(&fs::read_to_string(&path).expect("cell.json")).expect("json")
}

fn resources(template: &Value) -> &serde_json::Map<String, Value> {
    template["Resources"].as_object().expect("resources")
}

/// A condition's value for `parameters` (the defaults for the others), as
/// CloudFormation evaluates `Fn::Equals`, `Fn::And`, `Fn::Or`, `Fn::Not`
/// and `Condition` references.
fn holds(template: &Value, condition: &Value, parameters: &BTreeMap<&str, &str>) -> bool {
    let value = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Object(o) if o.contains_key("Ref") => {
                let name = o["Ref"].as_str().expect("ref");
                parameters.get(name).map(|s| (*s).to_owned()).unwrap_or_else(|| {
                    let default = &template["Parameters"][name]["Default"];
                    default.as_str().map_or_else(|| default.to_string(), str::to_owned)
                })
            }
            other => panic!("a condition compares {other}"),
        }
    };
    let all = |items: &Value| {
        items.as_array().expect("list").iter().map(|c| holds(template, c, parameters)).collect::<Vec<_>>()
    };
    match condition {
        Value::String(name) => holds(template, &template["Conditions"][name.as_str()], parameters),
        Value::Object(o) if o.contains_key("Fn::Equals") => {
            let pair = o["Fn::Equals"].as_array().expect("pair");
            value(&pair[0]) == value(&pair[1])
        }
        Value::Object(o) if o.contains_key("Fn::And") => all(&o["Fn::And"]).iter().all(|b| *b),
        Value::Object(o) if o.contains_key("Fn::Or") => all(&o["Fn::Or"]).iter().any(|b| *b),
        Value::Object(o) if o.contains_key("Fn::Not") => !all(&o["Fn::Not"])[0],
        Value::Object(o) if o.contains_key("Condition") => holds(template, &o["Condition"], parameters),
        other => panic!("unknown condition {other}"),
    }
}

/// The logical ids of the resources created with `parameters`.
fn created(template: &Value, parameters: &[(&str, &str)]) -> BTreeSet<String> {
    let parameters: BTreeMap<&str, &str> = parameters.iter().copied().collect();
    resources(template)
        .iter()
        .filter(|(_, r)| r.get("Condition").is_none_or(|c| holds(template, c, &parameters)))
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn each_store_and_network_choice_creates_its_parts_and_only_those() {
    let template = cell();
    let database = [
        "DatabaseVpc",
        "PrivateSubnetA",
        "PrivateSubnetB",
        "SqsInterfaceEndpoint",
        "EndpointSecurityGroup",
        "AuroraCluster",
        "AuroraWriterInstance",
        "AuroraReaderInstance",
        "AuroraSubnetGroup",
        "AuroraClusterParameters",
        "AuroraSecurityGroup",
        "WriterSecurityGroup",
        "DatabaseIngressFromWriter",
        "DatabaseCaLayer",
        "PostgresWriter",
        "TimestreamWriter",
        "TimestreamTable",
        "StatusWriterErrorsAlarm",
        "DatabaseCapacityAlarm",
    ];
    let of = |parameters: &[(&str, &str)]| -> BTreeSet<&str> {
        let made = created(&template, parameters);
        database.iter().copied().filter(|id| made.contains(*id)).collect()
    };
    let set = |ids: &[&'static str]| -> BTreeSet<&str> { ids.iter().copied().collect() };
    assert_eq!(of(&[("Store", "none")]), set(&[]));
    assert_eq!(
        of(&[("Store", "timestream")]),
        set(&["TimestreamWriter", "TimestreamTable", "StatusWriterErrorsAlarm"])
    );
    // A fresh account: a network of the cell's own.
    assert_eq!(
        of(&[("Store", "aurora")]),
        set(&[
            "DatabaseVpc",
            "PrivateSubnetA",
            "PrivateSubnetB",
            "SqsInterfaceEndpoint",
            "EndpointSecurityGroup",
            "AuroraCluster",
            "AuroraWriterInstance",
            "AuroraSubnetGroup",
            "AuroraClusterParameters",
            "AuroraSecurityGroup",
            "WriterSecurityGroup",
            "DatabaseIngressFromWriter",
            "DatabaseCaLayer",
            "PostgresWriter",
            "StatusWriterErrorsAlarm",
            "DatabaseCapacityAlarm",
        ])
    );
    let with_reader = of(&[("Store", "aurora"), ("AuroraReader", "true")]);
    assert!(with_reader.contains("AuroraReaderInstance"));
    // Given subnets that reach SQS already: no VPC, no endpoint.
    let given = of(&[("Store", "aurora"), ("DatabaseNetwork", "existing"), ("SqsEndpoint", "present")]);
    assert!(given.contains("AuroraCluster") && given.contains("PostgresWriter"));
    for absent in ["DatabaseVpc", "PrivateSubnetA", "SqsInterfaceEndpoint", "EndpointSecurityGroup"] {
        assert!(!given.contains(absent), "{absent}");
    }
    // Given subnets reach SQS by default (the endpoint's private DNS would
    // carry the whole VPC's SQS calls); asked, an endpoint in them.
    let given = of(&[("Store", "aurora"), ("DatabaseNetwork", "existing")]);
    assert!(!given.contains("SqsInterfaceEndpoint") && !given.contains("DatabaseVpc"));
    let given = of(&[("Store", "aurora"), ("DatabaseNetwork", "existing"), ("SqsEndpoint", "create")]);
    assert!(given.contains("SqsInterfaceEndpoint") && !given.contains("DatabaseVpc"));
    // The user's database: only the writer, its network access and trust.
    assert_eq!(
        of(&[("Store", "existing")]),
        set(&[
            "WriterSecurityGroup",
            "DatabaseIngressFromWriter",
            "DatabaseCaLayer",
            "PostgresWriter",
            "StatusWriterErrorsAlarm"
        ])
    );
    // No store kind makes a way to or from the internet.
    for r in resources(&template).values() {
        let kind = r["Type"].as_str().unwrap_or_default();
        assert!(
            !["AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EIP", "AWS::EC2::Route"].contains(&kind),
            "{kind}"
        );
    }
}

#[test]
fn the_cluster_is_encrypted_with_the_cell_key_tls_only_iam_authenticated_and_outlives_a_delete() {
    let template = cell();
    let r = resources(&template);
    let cluster = &r["AuroraCluster"];
    let p = &cluster["Properties"];
    assert_eq!(p["Engine"], "aurora-postgresql");
    assert_eq!((&p["StorageEncrypted"], &p["KmsKeyId"]), (&json!(true), &json!({ "Ref": "CellKey" })));
    assert_eq!(
        (&p["ManageMasterUserPassword"], &p["MasterUserSecret"]["KmsKeyId"]),
        (&json!(true), &json!({ "Ref": "CellKey" }))
    );
    assert!(p.get("MasterUserPassword").is_none(), "no password in the template");
    assert_eq!(p["EnableIAMDatabaseAuthentication"], true);
    assert_eq!(p["EnableHttpEndpoint"], true, "the Data API: the operators' path");
    assert_eq!(p["DeletionProtection"], true);
    assert_eq!((&cluster["DeletionPolicy"], &cluster["UpdateReplacePolicy"]), (&json!("Snapshot"), &json!("Snapshot")));
    assert_eq!(p["BackupRetentionPeriod"], json!({ "Ref": "DatabaseBackupDays" }));
    let days = &template["Parameters"]["DatabaseBackupDays"];
    assert_eq!((days["MinValue"].as_u64(), days["MaxValue"].as_u64()), (Some(1), Some(35)));
    // The key the cluster and its secret use outlives the stack.
    assert_eq!(r["CellKey"]["DeletionPolicy"], "Retain");
    // PostgreSQL 15, the major version the tests run; TLS forced.
    let parameters = &r["AuroraClusterParameters"]["Properties"];
    assert_eq!(parameters["Family"], "aurora-postgresql15");
    assert_eq!(parameters["Parameters"]["rds.force_ssl"], "1");
    let version = template["Parameters"]["AuroraEngineVersion"]["Default"].as_str().expect("version");
    assert!(version.starts_with("15."), "{version}");
    assert_eq!(version, bems_template::database::AURORA_ENGINE_VERSION);
    for id in ["AuroraWriterInstance", "AuroraReaderInstance"] {
        let i = &r[id]["Properties"];
        assert_eq!((&i["DBInstanceClass"], &i["PubliclyAccessible"]), (&json!("db.serverless"), &json!(false)), "{id}");
        assert_eq!(i["DBClusterIdentifier"], json!({ "Ref": "AuroraCluster" }));
    }
    assert!(p["VpcSecurityGroupIds"].to_string().contains("AuroraSecurityGroup"));
    // The Data API's read-only login: a generated password under the cell
    // key, for the role the store's grants make.
    let secret = &r["DatabaseReaderSecret"];
    assert_eq!(secret["Condition"], "WithAurora");
    assert_eq!(secret["Properties"]["KmsKeyId"], json!({ "Fn::GetAtt": ["CellKey", "Arn"] }));
    let generated = &secret["Properties"]["GenerateSecretString"];
    let username: Value =
        serde_json::from_str(generated["SecretStringTemplate"].as_str().expect("template")).expect("JSON");
    assert_eq!(username["username"], bems_core::contract::DB_API_READER);
    assert_eq!(generated["GenerateStringKey"], "password");
    assert!(
        bems_store::postgres::roles::grant_sql(&bems_store::postgres::Schema::new("bems_x").expect("schema")).contains(
            &format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA bems_x TO bems_reader, {}",
                bems_core::contract::DB_API_READER
            )
        )
    );
    assert_eq!(template["Outputs"]["DatabaseReaderSecretArn"]["Value"], json!({ "Ref": "DatabaseReaderSecret" }));
}

/// The archive's bucket: with either PostgreSQL store only, under the cell
/// key, private, TLS only, versioned, kept when the stack goes.
#[test]
fn the_archive_bucket_is_private_encrypted_with_the_cell_key_and_kept() {
    let template = cell();
    for (store, expected) in [("aurora", true), ("existing", true), ("timestream", false), ("none", false)] {
        let made = created(&template, &[("Store", store)]);
        for id in ["StoreArchive", "StoreArchivePolicy"] {
            assert_eq!(made.contains(id), expected, "{id} with Store={store}");
        }
    }
    let r = resources(&template);
    let bucket = &r["StoreArchive"];
    assert_eq!((&bucket["DeletionPolicy"], &bucket["UpdateReplacePolicy"]), (&json!("Retain"), &json!("Retain")));
    let p = &bucket["Properties"];
    let encryption = &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
    assert_eq!(encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"], "aws:kms");
    assert_eq!(
        encryption["ServerSideEncryptionByDefault"]["KMSMasterKeyID"],
        json!({ "Fn::GetAtt": ["CellKey", "Arn"] })
    );
    assert_eq!(encryption["BucketKeyEnabled"], true, "one KMS request per object, not per part");
    let block = &p["PublicAccessBlockConfiguration"];
    for setting in ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"] {
        assert_eq!(block[setting], true, "{setting}");
    }
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    let rules = p["LifecycleConfiguration"]["Rules"].as_array().expect("rules");
    assert!(rules.iter().any(|r| r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7));
    let deny = &r["StoreArchivePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!((&deny["Effect"], &deny["Condition"]["Bool"]["aws:SecureTransport"]), (&json!("Deny"), &json!("false")));
    assert_eq!(template["Outputs"]["StoreArchiveUrl"]["Value"], json!({ "Fn::Sub": "s3://${StoreArchive}" }));
}

/// The daily upkeep on Aurora: two schedules call the Data API with the
/// statements `bems store partitions` and the store's check run, as a role
/// that may do that only; failures dead-letter and warn.
#[test]
fn the_daily_upkeep_runs_the_store_s_own_statements_through_the_data_api() {
    let template = cell();
    for (store, expected) in [("aurora", true), ("existing", false), ("timestream", false), ("none", false)] {
        let made = created(&template, &[("Store", store)]);
        for id in [
            "StorePartitionsSchedule",
            "StoreDefaultPartitionSchedule",
            "StoreUpkeepRole",
            "StoreUpkeepDlq",
            "StoreUpkeepFailedAlarm",
        ] {
            assert_eq!(made.contains(id), expected, "{id} with Store={store}");
        }
    }
    let r = resources(&template);
    let schema = bems_store::postgres::Schema::of_cell(&bems_core::fields::CellId::new("prod-eu-1").expect("cell"));
    let months = bems_template::database::PARTITIONS_AHEAD.to_string();
    for (id, sql) in [
        ("StorePartitionsSchedule", bems_store::postgres::partitions::ensure_sql(&schema, "now()", &months)),
        ("StoreDefaultPartitionSchedule", bems_store::postgres::partitions::check_default_sql(&schema)),
    ] {
        let p = &r[id]["Properties"];
        assert_eq!(p["ScheduleExpressionTimezone"], "UTC");
        let target = &p["Target"];
        assert_eq!(
            target["Arn"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:scheduler:::aws-sdk:rdsdata:executeStatement" })
        );
        let input: Value = serde_json::from_str(target["Input"]["Fn::Sub"].as_str().expect("input")).expect("JSON");
        assert_eq!(input["Sql"], sql.as_str(), "{id}: the statement the store runs");
        assert_eq!(input["ResourceArn"], "${AuroraCluster.DBClusterArn}");
        assert_eq!(input["SecretArn"], "${AuroraCluster.MasterUserSecret.SecretArn}");
        assert_eq!(input["Database"], bems_core::contract::DATABASE_NAME);
        assert_eq!(target["DeadLetterConfig"]["Arn"], json!({ "Fn::GetAtt": ["StoreUpkeepDlq", "Arn"] }));
        assert!(target["RetryPolicy"]["MaximumRetryAttempts"].as_u64().is_some_and(|n| n > 0));
    }
    let statements = r["StoreUpkeepRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements");
    let actions: Vec<String> = statements.iter().map(|s| s["Action"].to_string()).collect();
    assert_eq!(
        actions,
        [
            r#""rds-data:ExecuteStatement""#,
            r#""secretsmanager:GetSecretValue""#,
            r#"["kms:Decrypt","kms:GenerateDataKey"]"#,
            r#""sqs:SendMessage""#
        ],
        "the Data API's statement, the secret it logs in with, the key of both, the dead letters; nothing else"
    );
    assert_eq!(statements[0]["Resource"], json!({ "Fn::GetAtt": ["AuroraCluster", "DBClusterArn"] }));
    let trust = &r["StoreUpkeepRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "scheduler.amazonaws.com");
    assert!(trust["Condition"]["StringEquals"]["aws:SourceAccount"].is_object(), "only for this account's schedules");
    assert_eq!(r["StoreUpkeepFailedAlarm"]["Properties"]["AlarmActions"], json!([{ "Ref": "AlertsWarning" }]));
}

#[test]
fn the_writer_logs_in_as_its_role_with_iam_over_verified_tls_from_its_vpc() {
    let template = cell();
    let r = resources(&template);
    let writer = &r["PostgresWriter"]["Properties"];
    let variables = &writer["Environment"]["Variables"];
    assert_eq!(variables[env::POSTGRES_AUTH], "iam");
    let url = variables[env::POSTGRES_URL]["Fn::Sub"][0].as_str().expect("url");
    assert_eq!(
        url,
        format!(
            "postgres://{DB_WRITER}@${{Host}}:${{Port}}/${{DatabaseName}}?sslmode=verify-full&sslrootcert=/opt/{}",
            bems_template::database::CA_FILE
        )
    );
    // The URL, its placeholders filled, is one the writer's configuration
    // takes, and requires TLS.
    let filled = url
        .replace("${Host}", "db.cluster-x.eu-west-1.rds.amazonaws.com")
        .replace("${Port}", "5432")
        .replace("${DatabaseName}", "bems");
    let ca = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/ca/README.md");
    let local = filled.replace(&format!("/opt/{}", bems_template::database::CA_FILE), &ca.display().to_string());
    let parsed =
        bems_store::postgres::Postgres::new(&local, bems_store::postgres::Schema::new("bems_x").expect("schema"));
    // (The README is not a certificate: the CA file is read, and named.)
    let error = parsed.expect_err("not a certificate").to_string();
    assert!(error.contains("sslrootcert") && error.contains("holds no certificate"), "{error}");

    // Its grant names the login the store's role SQL makes, on the
    // cluster's resource id.
    let role = writer["Role"]["Fn::GetAtt"][0].as_str().expect("role");
    let statements =
        r[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].as_array().expect("statements");
    let connect = statements.iter().find(|s| s["Action"] == "rds-db:connect").expect("rds-db:connect");
    let arn = &connect["Resource"]["Fn::Sub"];
    assert!(arn[0].as_str().expect("arn").ends_with(&format!(":dbuser:${{ResourceId}}/{DB_WRITER}")), "{arn}");
    assert_eq!(
        arn[1]["ResourceId"],
        json!({ "Fn::If": ["WithAurora", { "Fn::GetAtt": ["AuroraCluster", "DBClusterResourceId"] }, { "Ref": "DatabaseResourceId" }] })
    );
    let sql =
        bems_store::postgres::roles::grant_sql(&bems_store::postgres::Schema::new("bems_prod_eu_1").expect("schema"));
    assert!(sql.contains(&format!("CREATE ROLE {DB_WRITER} LOGIN NOSUPERUSER")), "{sql}");
    assert!(sql.contains(&format!("GRANT rds_iam TO {DB_WRITER}")), "{sql}");
    // Nothing else of the database's: no Data API, no secret.
    let policy = r[role]["Properties"]["Policies"].to_string();
    assert!(!policy.contains("rds-data:") && !policy.contains("secretsmanager:"), "{policy}");

    // In the VPC, behind its own security group, with the CA layer.
    assert_eq!(writer["VpcConfig"]["SecurityGroupIds"], json!([{ "Fn::GetAtt": ["WriterSecurityGroup", "GroupId"] }]));
    assert_eq!(writer["Layers"], json!([{ "Ref": "DatabaseCaLayer" }]));
    let layer = &r["DatabaseCaLayer"]["Properties"];
    assert_eq!(layer["ContentUri"], "../../../infra/ca");
    assert!(ca.exists(), "infra/ca/ (the layer's directory) is in the repository");
    assert!(r["PostgresWriter"]["Metadata"]["checkov"].to_string().find("CKV_AWS_117").is_none(), "it has a VPC");
}

#[test]
fn only_the_writer_reaches_the_database_and_only_its_dead_letters_leave_the_vpc() {
    let template = cell();
    let r = resources(&template);
    let ingress = &r["DatabaseIngressFromWriter"]["Properties"];
    assert_eq!(ingress["SourceSecurityGroupId"], json!({ "Fn::GetAtt": ["WriterSecurityGroup", "GroupId"] }));
    assert_eq!(ingress["IpProtocol"], "tcp");
    assert!(r["AuroraSecurityGroup"]["Properties"].get("SecurityGroupIngress").is_none(), "no other way in");
    let egress = r["WriterSecurityGroup"]["Properties"]["SecurityGroupEgress"].as_array().expect("egress");
    assert_eq!(egress.len(), 2);
    assert!(egress.iter().all(|e| e["IpProtocol"] == "tcp" && e["Description"].is_string()));
    assert_eq!(egress[1]["FromPort"], 443);
    let endpoint = &r["SqsInterfaceEndpoint"]["Properties"];
    assert_eq!((&endpoint["VpcEndpointType"], &endpoint["PrivateDnsEnabled"]), (&json!("Interface"), &json!(true)));
    let statement = &endpoint["PolicyDocument"]["Statement"];
    assert_eq!(statement.as_array().map(Vec::len), Some(1));
    assert_eq!(statement[0]["Action"], json!(["sqs:SendMessage", "sqs:GetQueueAttributes"]));
    assert_eq!(statement[0]["Resource"], json!({ "Fn::GetAtt": ["StatusDlq", "Arn"] }));
    let vpc = &r["DatabaseVpc"]["Properties"];
    assert_eq!((&vpc["EnableDnsSupport"], &vpc["EnableDnsHostnames"]), (&json!(true), &json!(true)));
    for (i, id) in ["PrivateSubnetA", "PrivateSubnetB"].iter().enumerate() {
        let subnet = &r[*id]["Properties"];
        assert_eq!(subnet["MapPublicIpOnLaunch"], false);
        assert_eq!(subnet["AvailabilityZone"], json!({ "Fn::Select": [i, { "Fn::GetAZs": "" }] }), "two zones");
    }
    // A store or network that names nothing is refused before anything is
    // created, the parameter named.
    let rules = &template["Rules"];
    for (rule, needs) in [
        (
            "ExistingDatabaseNamed",
            &["DatabaseHost", "DatabaseResourceId", "DatabaseSecurityGroupId", "VpcId", "SubnetIds"][..],
        ),
        ("ExistingNetworkNamed", &["VpcId", "SubnetIds"][..]),
    ] {
        let assertions = rules[rule]["Assertions"].as_array().expect("assertions");
        for name in needs {
            assert!(
                assertions.iter().any(|a| a["Assert"].to_string().contains(&format!("\"Ref\":\"{name}\""))
                    && a["AssertDescription"].as_str().is_some_and(|d| d.contains(name))),
                "{rule}: {name}"
            );
        }
    }
}

/// EC2 refuses a security group or rule description with other characters
/// than these ("a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*", EC2 API
/// reference, `IpRange.Description` and `CreateSecurityGroup`): an
/// apostrophe fails the deployment.
#[test]
fn security_group_descriptions_use_only_what_ec2_accepts() {
    let template = cell();
    let ok = |text: &str| text.chars().all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c));
    let mut seen = 0;
    for (id, r) in resources(&template) {
        let p = &r["Properties"];
        let mut texts: Vec<&Value> = Vec::new();
        match r["Type"].as_str() {
            Some("AWS::EC2::SecurityGroup") => {
                texts.push(&p["GroupDescription"]);
                for rules in ["SecurityGroupIngress", "SecurityGroupEgress"] {
                    texts.extend(p[rules].as_array().into_iter().flatten().map(|rule| &rule["Description"]));
                }
            }
            Some("AWS::EC2::SecurityGroupIngress" | "AWS::EC2::SecurityGroupEgress") => texts.push(&p["Description"]),
            _ => continue,
        }
        for text in texts {
            let text = text.as_str().unwrap_or_else(|| panic!("{id}: a description that is not text: {text}"));
            assert!(ok(text), "{id}: EC2 refuses {text:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, 9, "three groups, their rules, and the ingress rule of the database");
}
