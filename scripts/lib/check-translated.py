"""Checks a cell's templates as AWS will read them, with AWS's own code:

- cell.json translated by aws-sam-translator (what CloudFormation runs
  after the AWS::Serverless-2016-10-31 transform): every function runs
  under the cell's own role, so SAM created no role and attached none of
  its managed policies (AWSLambdaSQSQueueExecutionRole would grant receive
  and delete on every queue of the account); every SQS event source mapping
  reports batch item failures and has a maximum concurrency; no function
  reserves concurrency.
- security.json: every resource type the Config recorder records, and
  every type a Config rule is scoped to, is a value of AWS Config's
  ResourceType in botocore's service model.

usage: python check-translated.py CELL_DIR   (exit 1 with the reasons)
"""

import json
import os
import sys
from pathlib import Path

import botocore.loaders
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

# The required parameters, as a first deployment sets them (the store is a
# condition, which the translator leaves to CloudFormation: every store's
# resources are translated).
PARAMETERS = {"Store": "aurora", "ConfigureApiGatewayAccount": "true"}


def translate(template):
    # The translator fills in pseudo parameters from a Region; any will do,
    # nothing is called.
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    translator = Translator(managed_policy_map={}, sam_parser=Parser())
    return translator.translate(sam_template=template, parameter_values=dict(PARAMETERS))


def check_cell(cell, problems):
    # `sam deploy` uploads each function's code and rewrites CodeUri to the
    # S3 object before CloudFormation translates; so does this check.
    for rid, r in cell["Resources"].items():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = f"s3://bems-artifacts/{rid}.zip"
        elif r["Type"] == "AWS::Serverless::LayerVersion":
            r["Properties"]["ContentUri"] = f"s3://bems-artifacts/{rid}.zip"
    translated = translate(cell)
    resources = translated["Resources"]
    ours = {rid for rid, r in cell["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    functions = {rid: r for rid, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    # Four processors, the forwarder, and the status writer of each store
    # kind (PostgreSQL, Timestream), of which a stack creates at most one.
    if len(functions) != 7:
        problems.append(f"expected 7 functions after the transform, found {sorted(functions)}")
    writer = functions.get("PostgresWriter", {}).get("Properties", {})
    if not writer.get("VpcConfig", {}).get("SubnetIds"):
        problems.append("the PostgreSQL writer has no VpcConfig after the transform")
    layers = [r for r in resources.values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    if len(layers) != 1 or not writer.get("Layers"):
        problems.append(f"the PostgreSQL writer's CA layer: {len(layers)} layer(s), Layers {writer.get('Layers')}")
    for rid, r in resources.items():
        kind = r["Type"]
        if kind == "AWS::IAM::Role" and rid not in ours:
            problems.append(f"SAM created role {rid} ({r['Properties'].get('ManagedPolicyArns')})")
    for rid, f in functions.items():
        role = f["Properties"].get("Role", {})
        name = role.get("Fn::GetAtt", [None])[0] if isinstance(role, dict) else None
        if name not in ours:
            problems.append(f"function {rid} runs under {role}, not one of the cell's roles")
        elif resources[name]["Properties"].get("ManagedPolicyArns"):
            problems.append(f"function {rid}'s role has managed policies {resources[name]['Properties']['ManagedPolicyArns']}")
        if "ReservedConcurrentExecutions" in f["Properties"]:
            problems.append(f"function {rid} reserves concurrency")
    mappings = [r for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    if len(mappings) != 4 + 4 + 2:
        problems.append(f"expected 10 event source mappings, found {len(mappings)}")
    for m in mappings:
        p = m["Properties"]
        if p.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
            problems.append(f"mapping of {p.get('FunctionName')} without ReportBatchItemFailures")
        if "MaximumConcurrency" not in p.get("ScalingConfig", {}):
            problems.append(f"mapping of {p.get('FunctionName')} without a maximum concurrency")


def check_security(security, problems):
    model = botocore.loaders.Loader().load_service_model("config", "service-2")
    valid = set(model["shapes"]["ResourceType"]["enum"])
    for rid, r in security["Resources"].items():
        p = r.get("Properties", {})
        types = []
        if r["Type"] == "AWS::Config::ConfigurationRecorder":
            types = p.get("RecordingGroup", {}).get("ResourceTypes", [])
        elif r["Type"] == "AWS::Config::ConfigRule":
            types = p.get("Scope", {}).get("ComplianceResourceTypes", [])
        for t in types:
            if t not in valid:
                problems.append(f"{rid}: {t} is not an AWS Config resource type")


def main():
    directory = Path(sys.argv[1])
    problems = []
    check_cell(json.loads((directory / "cell.json").read_text()), problems)
    check_security(json.loads((directory / "security.json").read_text()), problems)
    for p in problems:
        print(f"check-translated: {directory}: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-translated: {directory}: roles, event sources and Config types as AWS reads them: fine")


if __name__ == "__main__":
    main()
