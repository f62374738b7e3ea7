//! The PostgreSQL store on AWS: an Aurora PostgreSQL Serverless v2
//! cluster (`Store=aurora`) or a database of the user's (`Store=existing`),
//! the network the status writer reaches it over, and the trust it
//! verifies the database's certificate against.
//!
//! - **Network.** `DatabaseNetwork=create` (Aurora only) makes a VPC with
//!   two private subnets in two Availability Zones and nothing else: no
//!   internet gateway, no NAT. The writer needs one AWS API, SQS (to
//!   dead-letter a record the store refuses), reached through an interface
//!   endpoint whose policy allows only that. Its credentials come from
//!   Lambda's environment and its IAM tokens are signed locally, so it
//!   calls neither STS nor RDS. `existing` puts the writer in the given
//!   subnets, which reach SQS already (`SqsEndpoint=present`, the default:
//!   a NAT or an SQS endpoint); `SqsEndpoint=create` adds the endpoint
//!   there too, whose private DNS then carries every SQS call of that VPC,
//!   so only for a VPC where nothing else calls SQS.
//! - **Security groups.** The writer's may reach the database on its port
//!   and HTTPS (the endpoint); the database's admits the writer only; the
//!   endpoint's admits the writer only.
//! - **Aurora.** Engine `aurora-postgresql` at [`AURORA_ENGINE_VERSION`]
//!   (the major version the tests run), storage and the master secret
//!   under the cell key, IAM authentication, the Data API (the path
//!   operators use, with no route into the VPC), TLS forced
//!   (`rds.force_ssl`, off by default on Aurora), deletion protection, a
//!   final snapshot when the stack deletes or replaces it, backups kept
//!   `DatabaseBackupDays`, logs exported; one `db.serverless` writer
//!   instance, and a reader in another Availability Zone with
//!   `AuroraReader=true`.
//! - **Trust.** The writer verifies the database's certificate against
//!   the RDS CA bundle, which the user downloads into `infra/ca/` before
//!   `sam build` (this repository cannot ship it: it is AWS's to publish);
//!   a Lambda layer carries it to `/opt`.

use std::collections::BTreeMap;

use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The Aurora PostgreSQL version the template deploys by default: the
/// major version of the PostgreSQL the tests run (15), at a minor version
/// Aurora offers (`aws rds describe-db-engine-versions --engine
/// aurora-postgresql`) that has the Data API (15.3 and later).
pub const AURORA_ENGINE_VERSION: &str = "15.10";
/// Its cluster parameter group family.
const AURORA_FAMILY: &str = "aurora-postgresql15";
/// The database every cell's schema lives in.
pub use bems_core::contract::DATABASE_NAME;
use bems_core::contract::DB_API_READER;
/// The Aurora master user: the migration owner, its password in a
/// Secrets Manager secret RDS manages (and rotates).
pub const MASTER_USER: &str = "bems_owner";
/// The CA bundle's file name in the layer (`/opt/<name>` on Lambda).
pub const CA_FILE: &str = "rds-ca.pem";

/// The database's host, port and resource id (for `rds-db:connect`),
/// whichever store made them.
fn endpoint() -> (Value, Value, Value) {
    (
        json!({ "Fn::If": ["WithAurora", get_att("AuroraCluster", "Endpoint.Address"), reference("DatabaseHost")] }),
        json!({ "Fn::If": ["WithAurora", get_att("AuroraCluster", "Endpoint.Port"), reference("DatabasePort")] }),
        json!({ "Fn::If": ["WithAurora", get_att("AuroraCluster", "DBClusterResourceId"), reference("DatabaseResourceId")] }),
    )
}

/// The writer's connection string (`BEMS_POSTGRES_URL`): its own login,
/// TLS verified against the layer's CA bundle, no password (IAM tokens).
pub(super) fn writer_url() -> Value {
    let (host, port, _) = endpoint();
    json!({
        "Fn::Sub": [
            format!(
                "postgres://{}@${{Host}}:${{Port}}/${{DatabaseName}}?sslmode=verify-full&sslrootcert=/opt/{CA_FILE}",
                bems_core::contract::DB_WRITER
            ),
            { "Host": host, "Port": port },
        ],
    })
}

/// What the writer's role may do for the database: connect as its login
/// with an IAM token, and manage the network interfaces Lambda puts in the
/// VPC (the actions of the managed `AWSLambdaVPCAccessExecutionRole`, which
/// grants them on `*`).
pub(super) fn writer_statements() -> Vec<Value> {
    let (_, _, resource_id) = endpoint();
    vec![
        json!({
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": {
                "Fn::Sub": [
                    format!(
                        "arn:${{AWS::Partition}}:rds-db:${{AWS::Region}}:${{AWS::AccountId}}:dbuser:${{ResourceId}}/{}",
                        bems_core::contract::DB_WRITER
                    ),
                    { "ResourceId": resource_id },
                ],
            },
        }),
        // Creating and deleting the function's network interfaces: in
        // this account and Region only; describing them works on `*` only.
        json!({
            "Effect": "Allow",
            "Action": [
                "ec2:CreateNetworkInterface",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            "Resource": [
                sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:network-interface/*"),
                sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:subnet/*"),
                sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:security-group/*"),
            ],
        }),
        json!({
            "Effect": "Allow",
            "Action": ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"],
            "Resource": "*",
        }),
    ]
}

/// The writer's `VpcConfig`.
pub(super) fn writer_vpc() -> Value {
    json!({
        "SecurityGroupIds": [get_att("WriterSecurityGroup", "GroupId")],
        "SubnetIds": subnets(),
    })
}

fn subnets() -> Value {
    json!({ "Fn::If": ["WithNewNetwork", [reference("PrivateSubnetA"), reference("PrivateSubnetB")], reference("SubnetIds")] })
}

fn vpc() -> Value {
    json!({ "Fn::If": ["WithNewNetwork", reference("DatabaseVpc"), reference("VpcId")] })
}

fn tags(spec: &CellSpec, what: &str) -> Value {
    json!([
        { "Key": "bems:cell", "Value": spec.cell_id().as_str() },
        { "Key": "Name", "Value": spec.resource_name(what) },
    ])
}

/// The network, security groups, Aurora cluster and CA layer.
pub(super) fn database(
    spec: &CellSpec,
    defaults: &TemplateDefaults,
    resources: &mut BTreeMap<String, Value>,
    outputs: &mut BTreeMap<String, Value>,
) {
    network(spec, resources);
    security_groups(spec, resources);
    aurora(spec, resources, outputs);
    archive(spec, resources, outputs);
    upkeep(spec, resources);
    resources.insert(
        "DatabaseCaLayer".into(),
        json!({
            "Type": "AWS::Serverless::LayerVersion",
            "Condition": "WithPostgres",
            "Properties": {
                "LayerName": spec.resource_name("database-ca"),
                "Description": format!("The CA bundle the status writer verifies the database's certificate against: /opt/{CA_FILE} (infra/ca/README.md)."),
                "ContentUri": format!("{}/infra/ca", defaults.code_uri),
                "CompatibleArchitectures": ["arm64"],
                "CompatibleRuntimes": ["provided.al2023"],
                "RetentionPolicy": "Delete",
            },
        }),
    );
    outputs.insert(
        "WriterSecurityGroupId".into(),
        json!({ "Condition": "WithPostgres", "Value": get_att("WriterSecurityGroup", "GroupId") }),
    );
}

/// The bucket `bems store archive` moves months older than the hot ones
/// to (docs/store.md "Archiving old months"): under the cell key, private,
/// TLS only, versioned, kept when the stack goes; files move to Glacier
/// Instant Retrieval (still read by Athena) after 90 days, and parts of an
/// upload that never finished are removed after 7.
fn archive(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    resources.insert(
        "StoreArchive".into(),
        retained(json!({
            "Type": "AWS::S3::Bucket",
            "Condition": "WithPostgres",
            "Metadata": { "checkov": { "skip": [
                {
                    "id": "CKV_AWS_18",
                    "comment": "Written once a month by bems store archive and read through Athena: CloudTrail data events record that (infra/README.md), without a bucket of access logs per cell.",
                },
                {
                    "id": "CKV_AWS_144",
                    "comment": "A copy in another Region is the operator's choice (cost, data residency); the store's own backups and the versioned files cover a lost object.",
                },
            ] } },
            "Properties": {
                "VersioningConfiguration": { "Status": "Enabled" },
                "BucketEncryption": { "ServerSideEncryptionConfiguration": [{
                    "ServerSideEncryptionByDefault": { "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": get_att("CellKey", "Arn") },
                    "BucketKeyEnabled": true,
                }] },
                "PublicAccessBlockConfiguration": security::private_bucket(),
                "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
                "LifecycleConfiguration": { "Rules": [
                    {
                        "Id": "cold-after-90-days",
                        "Status": "Enabled",
                        "Transitions": [{ "StorageClass": "GLACIER_IR", "TransitionInDays": 90 }],
                        "NoncurrentVersionExpiration": { "NoncurrentDays": 30 },
                    },
                    {
                        "Id": "unfinished-uploads",
                        "Status": "Enabled",
                        "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 7 },
                    },
                ] },
                "Tags": tags(spec, "store-archive"),
            },
        })),
    );
    resources.insert(
        "StoreArchivePolicy".into(),
        json!({
            "Type": "AWS::S3::BucketPolicy",
            "Condition": "WithPostgres",
            "Properties": {
                "Bucket": reference("StoreArchive"),
                "PolicyDocument": { "Version": "2012-10-17", "Statement": [security::tls_only("StoreArchive")] },
            },
        }),
    );
    outputs
        .insert("StoreArchiveUrl".into(), json!({ "Condition": "WithPostgres", "Value": sub("s3://${StoreArchive}") }));
}

/// Months ahead the daily schedule keeps partitions for.
pub const PARTITIONS_AHEAD: u32 = 3;

/// The store's daily upkeep on Aurora, with no function to run: two
/// EventBridge Scheduler schedules call the RDS Data API's
/// `ExecuteStatement` (a universal target) as the master user, one
/// statement each: the schema's `ensure_partitions` (migration 0003; what
/// `bems store partitions` runs) for [`PARTITIONS_AHEAD`] months, then its
/// `check_default_partition`, which fails while rows wait in the default
/// partition. A call that fails after its retries (before `bems store
/// migrate` made the functions, or the check) lands in a dead-letter queue
/// with the database's message, and the queue's alarm warns.
fn upkeep(spec: &CellSpec, resources: &mut BTreeMap<String, Value>) {
    let schema = bems_core::contract::store_name(spec.cell_id());
    resources.insert(
        "StoreUpkeepDlq".into(),
        with_condition(standard_dlq(spec.cell_id().as_str(), &spec.store_upkeep_dlq_name()), "WithAurora"),
    );
    let secret = get_att("AuroraCluster", "MasterUserSecret.SecretArn");
    resources.insert(
        "StoreUpkeepRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Condition": "WithAurora",
            "Properties": {
                "Description": "EventBridge Scheduler runs the store's daily upkeep statements through the RDS Data API, and nothing else.",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "scheduler.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    }],
                },
                "Policies": [{
                    "PolicyName": "store-upkeep",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            { "Effect": "Allow", "Action": "rds-data:ExecuteStatement", "Resource": get_att("AuroraCluster", "DBClusterArn") },
                            { "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret },
                            { "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": get_att("CellKey", "Arn") },
                            { "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": get_att("StoreUpkeepDlq", "Arn") },
                        ],
                    },
                }],
            },
        }),
    );
    let statement = |sql: String| {
        let input = json!({
            "ResourceArn": "${AuroraCluster.DBClusterArn}",
            "SecretArn": "${AuroraCluster.MasterUserSecret.SecretArn}",
            "Database": DATABASE_NAME,
            "Sql": sql,
        });
        sub(&input.to_string())
    };
    let ahead = PARTITIONS_AHEAD.to_string();
    for (id, name, cron, what, sql) in [
        (
            "StorePartitionsSchedule",
            "store-partitions",
            "cron(15 2 * * ? *)",
            "makes the monthly partitions for the months ahead",
            bems_core::contract::ensure_partitions_sql(&schema, "now()", &ahead),
        ),
        (
            "StoreDefaultPartitionSchedule",
            "store-default-partition",
            "cron(45 2 * * ? *)",
            "fails while status changes wait in the default partition",
            bems_core::contract::check_default_partition_sql(&schema),
        ),
    ] {
        resources.insert(
            id.into(),
            json!({
                "Type": "AWS::Scheduler::Schedule",
                "Condition": "WithAurora",
                "Properties": {
                    "Name": spec.resource_name(name),
                    "Description": format!("Daily, through the RDS Data API: {what} (docs/store.md)."),
                    "ScheduleExpression": cron,
                    "ScheduleExpressionTimezone": "UTC",
                    "FlexibleTimeWindow": { "Mode": "OFF" },
                    "State": "ENABLED",
                    "Target": {
                        "Arn": sub("arn:${AWS::Partition}:scheduler:::aws-sdk:rdsdata:executeStatement"),
                        "RoleArn": get_att("StoreUpkeepRole", "Arn"),
                        "Input": statement(sql),
                        "RetryPolicy": { "MaximumRetryAttempts": 5, "MaximumEventAgeInSeconds": 3600 },
                        "DeadLetterConfig": { "Arn": get_att("StoreUpkeepDlq", "Arn") },
                    },
                },
            }),
        );
    }
}

fn with_condition(mut resource: Value, condition: &str) -> Value {
    resource["Condition"] = json!(condition);
    resource
}

fn network(spec: &CellSpec, resources: &mut BTreeMap<String, Value>) {
    resources.insert(
        "DatabaseVpc".into(),
        json!({
            "Type": "AWS::EC2::VPC",
            "Condition": "WithNewNetwork",
            "Properties": {
                "CidrBlock": reference("VpcCidr"),
                // Private DNS names of the interface endpoint need both.
                "EnableDnsSupport": true,
                "EnableDnsHostnames": true,
                "Tags": tags(spec, "database"),
            },
        }),
    );
    for (i, id) in ["PrivateSubnetA", "PrivateSubnetB"].iter().enumerate() {
        resources.insert(
            (*id).into(),
            json!({
                "Type": "AWS::EC2::Subnet",
                "Condition": "WithNewNetwork",
                "Properties": {
                    "VpcId": reference("DatabaseVpc"),
                    // Two /20s of the VPC's range, in two zones.
                    "CidrBlock": { "Fn::Select": [i, { "Fn::Cidr": [reference("VpcCidr"), 2, 12] }] },
                    "AvailabilityZone": { "Fn::Select": [i, { "Fn::GetAZs": "" }] },
                    "MapPublicIpOnLaunch": false,
                    "Tags": tags(spec, &format!("private-{}", if i == 0 { "a" } else { "b" })),
                },
            }),
        );
    }
    resources.insert(
        "SqsInterfaceEndpoint".into(),
        json!({
            "Type": "AWS::EC2::VPCEndpoint",
            "Condition": "WithSqsEndpoint",
            "Properties": {
                "VpcEndpointType": "Interface",
                "ServiceName": sub("com.amazonaws.${AWS::Region}.sqs"),
                "VpcId": vpc(),
                "SubnetIds": subnets(),
                "SecurityGroupIds": [get_att("EndpointSecurityGroup", "GroupId")],
                "PrivateDnsEnabled": true,
                // Through this endpoint, only the writer's dead letters.
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
                        "Resource": get_att("StatusDlq", "Arn"),
                        "Condition": { "StringEquals": { "aws:PrincipalAccount": reference("AWS::AccountId") } },
                    }],
                },
            },
        }),
    );
}

fn security_groups(spec: &CellSpec, resources: &mut BTreeMap<String, Value>) {
    resources.insert(
        "WriterSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Condition": "WithPostgres",
            "Properties": {
                "GroupDescription": format!("{}: the status writer; out to the database and HTTPS only", spec.function_name(bems_core::contract::Function::StatusWriter)),
                "VpcId": vpc(),
                "SecurityGroupEgress": [
                    {
                        "Description": "The database",
                        "IpProtocol": "tcp",
                        "FromPort": { "Fn::If": ["WithAurora", 5432, reference("DatabasePort")] },
                        "ToPort": { "Fn::If": ["WithAurora", 5432, reference("DatabasePort")] },
                        "DestinationSecurityGroupId": { "Fn::If": ["WithAurora", get_att("AuroraSecurityGroup", "GroupId"), reference("DatabaseSecurityGroupId")] },
                    },
                    {
                        "Description": "AWS APIs (SQS, for dead letters) through the interface endpoint or a NAT",
                        "IpProtocol": "tcp",
                        "FromPort": 443,
                        "ToPort": 443,
                        "CidrIp": "0.0.0.0/0",
                    },
                ],
                "Tags": tags(spec, "status-writer"),
            },
        }),
    );
    resources.insert(
        "DatabaseIngressFromWriter".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "WithPostgres",
            "Properties": {
                "Description": "The status writer of the cell",
                "GroupId": { "Fn::If": ["WithAurora", get_att("AuroraSecurityGroup", "GroupId"), reference("DatabaseSecurityGroupId")] },
                "IpProtocol": "tcp",
                "FromPort": { "Fn::If": ["WithAurora", 5432, reference("DatabasePort")] },
                "ToPort": { "Fn::If": ["WithAurora", 5432, reference("DatabasePort")] },
                "SourceSecurityGroupId": get_att("WriterSecurityGroup", "GroupId"),
            },
        }),
    );
    resources.insert(
        "AuroraSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Condition": "WithAurora",
            "Properties": {
                "GroupDescription": format!("{}: the Aurora cluster; in from the status writer only", spec.resource_name("database")),
                "VpcId": vpc(),
                // It starts no connection: no egress (the rule below only
                // replaces the default allow-all).
                "SecurityGroupEgress": [{
                    "Description": "None: the database starts no connection",
                    "IpProtocol": "icmp",
                    "FromPort": -1,
                    "ToPort": -1,
                    "CidrIp": "127.0.0.1/32",
                }],
                "Tags": tags(spec, "database"),
            },
        }),
    );
    resources.insert(
        "EndpointSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Condition": "WithSqsEndpoint",
            "Properties": {
                "GroupDescription": format!("{}: the SQS interface endpoint; in from the status writer only", spec.resource_name("sqs-endpoint")),
                "VpcId": vpc(),
                "SecurityGroupIngress": [{
                    "Description": "The status writer of the cell",
                    "IpProtocol": "tcp",
                    "FromPort": 443,
                    "ToPort": 443,
                    "SourceSecurityGroupId": get_att("WriterSecurityGroup", "GroupId"),
                }],
                "SecurityGroupEgress": [{
                    "Description": "None: the endpoint answers, it starts no connection",
                    "IpProtocol": "icmp",
                    "FromPort": -1,
                    "ToPort": -1,
                    "CidrIp": "127.0.0.1/32",
                }],
                "Tags": tags(spec, "sqs-endpoint"),
            },
        }),
    );
}

fn aurora(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    resources.insert(
        "AuroraSubnetGroup".into(),
        json!({
            "Type": "AWS::RDS::DBSubnetGroup",
            "Condition": "WithAurora",
            "Properties": {
                "DBSubnetGroupDescription": format!("{}: private subnets in two Availability Zones", spec.resource_name("database")),
                "SubnetIds": subnets(),
                "Tags": tags(spec, "database"),
            },
        }),
    );
    resources.insert(
        "AuroraClusterParameters".into(),
        json!({
            "Type": "AWS::RDS::DBClusterParameterGroup",
            "Condition": "WithAurora",
            "Properties": {
                "Description": format!("{}: TLS only", spec.resource_name("database")),
                "Family": AURORA_FAMILY,
                // Off by default on Aurora PostgreSQL: without it a client
                // could log in in the clear.
                "Parameters": { "rds.force_ssl": "1" },
                "Tags": tags(spec, "database"),
            },
        }),
    );
    resources.insert(
        "AuroraCluster".into(),
        json!({
            "Type": "AWS::RDS::DBCluster",
            "Condition": "WithAurora",
            // The status history is the auditors': a final snapshot if the
            // stack deletes or replaces the cluster, and deletion
            // protection against a mistaken delete of the cluster itself.
            "DeletionPolicy": "Snapshot",
            "UpdateReplacePolicy": "Snapshot",
            "Properties": {
                "Engine": "aurora-postgresql",
                "EngineVersion": reference("AuroraEngineVersion"),
                "DatabaseName": reference("DatabaseName"),
                "MasterUsername": MASTER_USER,
                "ManageMasterUserPassword": true,
                "MasterUserSecret": { "KmsKeyId": reference("CellKey") },
                "StorageEncrypted": true,
                "KmsKeyId": reference("CellKey"),
                "StorageType": reference("AuroraStorage"),
                "ServerlessV2ScalingConfiguration": {
                    "MinCapacity": reference("AuroraMinCapacity"),
                    "MaxCapacity": reference("AuroraMaxCapacity"),
                },
                "EnableIAMDatabaseAuthentication": true,
                "EnableHttpEndpoint": true,
                "DeletionProtection": true,
                "BackupRetentionPeriod": reference("DatabaseBackupDays"),
                "CopyTagsToSnapshot": true,
                "EnableCloudwatchLogsExports": ["postgresql"],
                "DBClusterParameterGroupName": reference("AuroraClusterParameters"),
                "DBSubnetGroupName": reference("AuroraSubnetGroup"),
                "VpcSecurityGroupIds": [get_att("AuroraSecurityGroup", "GroupId")],
                "Port": 5432,
                "Tags": tags(spec, "database"),
            },
        }),
    );
    let instance = |condition: &str, tier: u32, zone: usize, what: &str| {
        json!({
            "Type": "AWS::RDS::DBInstance",
            "Condition": condition,
            "Metadata": { "checkov": { "skip": [
                { "id": "CKV_AWS_118", "comment": "Enhanced monitoring adds a role and per-second log ingestion; Aurora's own metrics (ACUUtilization, ServerlessDatabaseCapacity, DatabaseConnections) and the exported postgresql log cover the alarms. Set MonitoringInterval to add it." },
            ] } },
            "Properties": {
                "Engine": "aurora-postgresql",
                "DBClusterIdentifier": reference("AuroraCluster"),
                "DBInstanceClass": "db.serverless",
                "PubliclyAccessible": false,
                "AutoMinorVersionUpgrade": true,
                "PromotionTier": tier,
                // In the new network, the writer in the first zone and the
                // reader in the second, so that a fail-over has another
                // zone to go to; in given subnets RDS chooses.
                "AvailabilityZone": { "Fn::If": ["WithNewNetwork", { "Fn::Select": [zone, { "Fn::GetAZs": "" }] }, reference("AWS::NoValue")] },
                "Tags": tags(spec, what),
            },
        })
    };
    resources.insert("AuroraWriterInstance".into(), instance("WithAurora", 0, 0, "database-writer"));
    let mut reader = instance("WithAuroraReader", 1, 1, "database-reader");
    // The first instance created is the writer.
    reader["DependsOn"] = json!(["AuroraWriterInstance"]);
    resources.insert("AuroraReaderInstance".into(), reader);
    // The readers' login through the Data API, which takes a secret's
    // password and no IAM token: `bems store migrate
    // --api-reader-secret-stdin` sets the role's password from it.
    resources.insert(
        "DatabaseReaderSecret".into(),
        json!({
            "Type": "AWS::SecretsManager::Secret",
            "Condition": "WithAurora",
            "Metadata": { "checkov": { "skip": [{
                "id": "CKV2_AWS_57",
                "comment": "Rotated by hand: put a new password in the secret, then run bems store migrate --api-reader-secret-stdin (infra/README.md); a rotation function would need a route into the VPC for a read-only login.",
            }] } },
            "Properties": {
                "Description": format!("The {DB_API_READER} login (SELECT only) the RDS Data API reads the store with: bems history|stuck --store data-api, bems-monitor --aws."),
                "KmsKeyId": get_att("CellKey", "Arn"),
                "GenerateSecretString": {
                    "SecretStringTemplate": json!({ "username": DB_API_READER }).to_string(),
                    "GenerateStringKey": "password",
                    "PasswordLength": 40,
                    // Characters a connection string or a shell would need quoted.
                    "ExcludeCharacters": "\"'@/\\:;?&=+%#` ",
                },
                "Tags": tags(spec, "database-reader"),
            },
        }),
    );
    for (name, value) in [
        ("DatabaseEndpoint", get_att("AuroraCluster", "Endpoint.Address")),
        ("DatabaseReadEndpoint", get_att("AuroraCluster", "ReadEndpoint.Address")),
        ("DatabaseClusterArn", get_att("AuroraCluster", "DBClusterArn")),
        ("DatabaseSecretArn", get_att("AuroraCluster", "MasterUserSecret.SecretArn")),
        ("DatabaseReaderSecretArn", reference("DatabaseReaderSecret")),
    ] {
        outputs.insert(name.into(), json!({ "Condition": "WithAurora", "Value": value }));
    }
}

/// The database's parameters (`Store=aurora` or `existing`).
pub(super) fn parameters() -> Value {
    json!({
        "DatabaseNetwork": {
            "Type": "String",
            "Default": "create",
            "AllowedValues": ["create", "existing"],
            "Description": "With Store=aurora: create (a VPC of two private subnets in two zones, no internet route, an SQS interface endpoint) or existing (VpcId and SubnetIds). Store=existing always uses VpcId and SubnetIds.",
        },
        "VpcCidr": {
            "Type": "String",
            "Default": "10.42.0.0/16",
            "AllowedPattern": "^(\\d{1,3}\\.){3}\\d{1,3}/(1[6-9])$",
            "Description": "With DatabaseNetwork=create: the new VPC's range, /16 to /19 (its two private subnets are /20s).",
        },
        "VpcId": {
            "Type": "String",
            "Default": "",
            "Description": "With DatabaseNetwork=existing or Store=existing: the VPC of the subnets below.",
        },
        "SubnetIds": {
            "Type": "CommaDelimitedList",
            "Default": "",
            "Description": "With DatabaseNetwork=existing or Store=existing: two or more private subnets in different zones that reach the database (and, with SqsEndpoint=present, SQS).",
        },
        "SqsEndpoint": {
            "Type": "String",
            "Default": "present",
            "AllowedValues": ["create", "present"],
            "Description": "With existing subnets: present (the default) when they already reach SQS (a NAT, or an SQS endpoint with private DNS); create adds an SQS interface endpoint with private DNS for the writer's dead letters, which then carries every SQS call of the whole VPC and admits only those: use it only in a VPC where nothing else calls SQS (a VPC may have one such endpoint). DatabaseNetwork=create always adds it.",
        },
        "AuroraEngineVersion": {
            "Type": "String",
            "Default": AURORA_ENGINE_VERSION,
            "AllowedPattern": "^15\\.\\d+$",
            "Description": "Aurora PostgreSQL 15 minor version (the major version BEMS is tested on; 15.3 or later has the Data API). List them: aws rds describe-db-engine-versions --engine aurora-postgresql --query 'DBEngineVersions[].EngineVersion'.",
        },
        "AuroraMinCapacity": {
            "Type": "Number",
            "Default": 0.5,
            "MinValue": 0.5,
            "MaxValue": 256,
            "Description": "Aurora Serverless v2 minimum capacity, ACUs (0.5 = 1 GiB). The writer runs around the clock, so the cluster never pauses.",
        },
        "AuroraMaxCapacity": {
            "Type": "Number",
            "Default": 8,
            "MinValue": 1,
            "MaxValue": 256,
            "Description": "Aurora Serverless v2 maximum capacity, ACUs. max_connections follows it (1,669 at 8 ACUs; the writer needs one per concurrent batch, WriterMaximumConcurrency).",
        },
        "AuroraStorage": {
            "Type": "String",
            "Default": "aurora",
            "AllowedValues": ["aurora", "aurora-iopt1"],
            "Description": "aurora (Standard: storage and I/O billed) or aurora-iopt1 (I/O-Optimized: no I/O charge, dearer ACUs and storage); see infra/README.md, Cost.",
        },
        "AuroraReader": {
            "Type": "String",
            "Default": "false",
            "AllowedValues": ["true", "false"],
            "Description": "true: a second db.serverless instance in another zone (fail-over target, read endpoint); doubles the ACU-hours at least.",
        },
        "DatabaseBackupDays": {
            "Type": "Number",
            "Default": 14,
            "MinValue": 1,
            "MaxValue": 35,
            "Description": "Days Aurora keeps its continuous backups (point-in-time restore).",
        },
        "DatabaseHost": {
            "Type": "String",
            "Default": "",
            "Description": "With Store=existing: the database's writer endpoint (an RDS or Aurora PostgreSQL with IAM authentication on and TLS).",
        },
        "DatabasePort": {
            "Type": "Number",
            "Default": 5432,
            "MinValue": 1,
            "MaxValue": 65_535,
            "Description": "With Store=existing: its port.",
        },
        "DatabaseName": {
            "Type": "String",
            "Default": DATABASE_NAME,
            "AllowedPattern": "^[a-z_][a-z0-9_]{0,62}$",
            "Description": "The database the cell's schema lives in (with Store=aurora, created by that name).",
        },
        "DatabaseResourceId": {
            "Type": "String",
            "Default": "",
            "Description": "With Store=existing: its resource id (cluster-... or db-...), which the writer's rds-db:connect permission names.",
        },
        "DatabaseSecurityGroupId": {
            "Type": "String",
            "Default": "",
            "Description": "With Store=existing: the database's security group; the stack adds a rule admitting the writer.",
        },
    })
}

/// The conditions of the stores and networks.
pub(super) fn conditions() -> Value {
    let store_is = |s: &str| json!({ "Fn::Equals": [reference("Store"), s] });
    json!({
        "WithTimestream": store_is("timestream"),
        "WithAurora": store_is("aurora"),
        "WithPostgres": { "Fn::Or": [store_is("aurora"), store_is("existing")] },
        "WithStore": { "Fn::Not": [store_is("none")] },
        "WithNewNetwork": { "Fn::And": [store_is("aurora"), { "Fn::Equals": [reference("DatabaseNetwork"), "create"] }] },
        "WithAuroraReader": { "Fn::And": [store_is("aurora"), { "Fn::Equals": [reference("AuroraReader"), "true"] }] },
        // The cell's own network always; given subnets when asked.
        "WithSqsEndpoint": {
            "Fn::And": [
                { "Condition": "WithPostgres" },
                { "Fn::Or": [{ "Condition": "WithNewNetwork" }, { "Fn::Equals": [reference("SqsEndpoint"), "create"] }] },
            ],
        },
    })
}

/// What CloudFormation checks before it creates anything: a store or
/// network that names nothing is refused with the parameter named.
pub(super) fn rules() -> Value {
    let given = |name: &str| json!({ "Fn::Not": [{ "Fn::Equals": [reference(name), ""] }] });
    let subnets_given = json!({ "Fn::Not": [{ "Fn::Contains": [reference("SubnetIds"), ""] }] });
    json!({
        "ExistingDatabaseNamed": {
            "RuleCondition": { "Fn::Equals": [reference("Store"), "existing"] },
            "Assertions": [
                { "Assert": given("DatabaseHost"), "AssertDescription": "Store=existing needs DatabaseHost (the database's writer endpoint)." },
                { "Assert": given("DatabaseResourceId"), "AssertDescription": "Store=existing needs DatabaseResourceId (cluster-... or db-...) for the writer's rds-db:connect." },
                { "Assert": given("DatabaseSecurityGroupId"), "AssertDescription": "Store=existing needs DatabaseSecurityGroupId, to admit the writer." },
                { "Assert": given("VpcId"), "AssertDescription": "Store=existing needs VpcId (the database's VPC)." },
                { "Assert": subnets_given.clone(), "AssertDescription": "Store=existing needs SubnetIds (private subnets that reach the database)." },
            ],
        },
        "ExistingNetworkNamed": {
            "RuleCondition": { "Fn::And": [
                { "Fn::Equals": [reference("Store"), "aurora"] },
                { "Fn::Equals": [reference("DatabaseNetwork"), "existing"] },
            ] },
            "Assertions": [
                { "Assert": given("VpcId"), "AssertDescription": "DatabaseNetwork=existing needs VpcId." },
                { "Assert": subnets_given, "AssertDescription": "DatabaseNetwork=existing needs SubnetIds (two or more private subnets in different zones)." },
            ],
        },
    })
}
