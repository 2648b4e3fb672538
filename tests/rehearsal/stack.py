"""The stack rehearsal's Python half (tests/it/rehearsal.rs runs it with .tools/lambda-venv's
Python: aws-sam-translator and boto3, pinned in scripts/requirements-lambda.txt).

  stack.py translate TEMPLATE [--param K=V ...] [--code-bucket B]
      template.yaml -> the CloudFormation JSON SAM would deploy, on stdout. SAM CLI's package
      step is done here the way the translator needs it: each function's local CodeUri becomes
      s3://B/<LogicalId>.zip, and a state machine's local DefinitionUri is inlined as its
      Definition (DefinitionSubstitutions stay: CloudFormation applies them). No managed policy
      may be named by name (the loader refuses: the template's grants are inline statements).
  stack.py create NAME TEMPLATE_JSON [--param K=V ...]
      creates the stack on the CloudFormation endpoint of AWS_ENDPOINT_URL_CLOUDFORMATION (moto),
      waits for it, and prints {status, reason, resources: {logical: {type, physical}}, outputs,
      functions: {logical: configuration}} as JSON.
"""

import argparse
import json
import os
import sys
import time

import boto3
import yaml


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !GetAtt, !Sub, ...)."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else "Fn::" + suffix
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


class NoManagedPolicies:
    def load(self):
        raise SystemExit("the template names a managed policy: its grants must be inline statements")


def params(pairs):
    out = {}
    for p in pairs or []:
        k, _, v = p.partition("=")
        out[k] = v
    return out


def translate(args):
    from samtranslator.translator.transform import transform

    base = os.path.dirname(os.path.abspath(args.template))
    with open(args.template) as f:
        sam = yaml.load(f, Loader=CfnLoader)
    for logical, res in sam.get("Resources", {}).items():
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = "s3://%s/%s.zip" % (args.code_bucket, logical)
        if res.get("Type") == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            with open(os.path.join(base, props.pop("DefinitionUri"))) as f:
                props["Definition"] = json.load(f)
    out = transform(sam, params(args.param), NoManagedPolicies())
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


def create(args):
    cfn = boto3.client("cloudformation")
    with open(args.template_json) as f:
        body = f.read()
    cfn.create_stack(
        StackName=args.name,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params(args.param).items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.time() + 120
    while True:
        stack = cfn.describe_stacks(StackName=args.name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.time() > deadline:
            break
        time.sleep(0.5)
    resources = {}
    for r in cfn.describe_stack_resources(StackName=args.name)["StackResources"]:
        resources[r["LogicalResourceId"]] = {
            "type": r["ResourceType"],
            "physical": r.get("PhysicalResourceId"),
            "status": r.get("ResourceStatus"),
        }
    functions = {}
    lam = boto3.client("lambda")
    for logical, r in resources.items():
        if r["type"] == "AWS::Lambda::Function":
            c = lam.get_function_configuration(FunctionName=r["physical"])
            c.pop("ResponseMetadata", None)
            functions[logical] = c
    out = {
        "status": stack["StackStatus"],
        "reason": stack.get("StackStatusReason"),
        "resources": resources,
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "functions": functions,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=str)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("translate")
    t.add_argument("template")
    t.add_argument("--param", action="append")
    t.add_argument("--code-bucket", default="rehearsal-code")
    c = sub.add_parser("create")
    c.add_argument("name")
    c.add_argument("template_json")
    c.add_argument("--param", action="append")
    args = ap.parse_args()
    {"translate": translate, "create": create}[args.cmd](args)


if __name__ == "__main__":
    main()
