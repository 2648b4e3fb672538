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


def resolve_find_in_map(node, template, values):
    """Fn::FindInMap with a key that is a parameter, resolved here: moto turns a Number
    parameter into an int and then misses the mapping's string key (KeyError: 60)."""
    if isinstance(node, list):
        return [resolve_find_in_map(v, template, values) for v in node]
    if not isinstance(node, dict):
        return node
    if list(node) == ["Fn::FindInMap"]:
        keys = []
        for k in node["Fn::FindInMap"]:
            if isinstance(k, dict) and list(k) == ["Ref"] and k["Ref"] in template["Parameters"]:
                k = values.get(k["Ref"], template["Parameters"][k["Ref"]].get("Default"))
            keys.append(k)
        if all(isinstance(k, (str, int)) for k in keys):
            m, top, second = (str(k) for k in keys)
            return template["Mappings"][m][top][second]
    return {k: resolve_find_in_map(v, template, values) for k, v in node.items()}


class Unresolved(Exception):
    pass


def evaluate(node, ctx):
    """A value of the translated template with its intrinsics resolved the way CloudFormation
    does, against the created stack: ctx = {params, conditions, physical, attrs, pseudo}."""
    if isinstance(node, list):
        return [evaluate(v, ctx) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            if arg in ctx["pseudo"]:
                return ctx["pseudo"][arg]
            if arg in ctx["params"]:
                return ctx["params"][arg]
            if ctx["physical"].get(arg) is None:
                raise Unresolved("Ref %s: the stack has no physical ID for it" % arg)
            return ctx["physical"][arg]
        if fn == "Fn::GetAtt":
            res, att = arg if isinstance(arg, list) else arg.split(".", 1)
            if (res, att) not in ctx["attrs"]:
                raise Unresolved("GetAtt %s.%s" % (res, att))
            return ctx["attrs"][(res, att)]
        if fn == "Fn::If":
            cond, yes, no = arg
            return evaluate(yes if condition(cond, ctx) else no, ctx)
        if fn == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            import re

            def sub(m):
                name = m.group(1)
                if name in extra:
                    return str(evaluate(extra[name], ctx))
                if "." in name:
                    return str(evaluate({"Fn::GetAtt": name.split(".", 1)}, ctx))
                return str(evaluate({"Ref": name}, ctx))

            return re.sub(r"\$\{([^}!]+)\}", sub, text)
        if fn == "Fn::Join":
            return arg[0].join(str(evaluate(v, ctx)) for v in evaluate(arg[1], ctx))
        if fn == "Fn::FindInMap":
            m, top, second = (str(evaluate(k, ctx)) for k in arg)
            return ctx["template"]["Mappings"][m][top][second]
        if fn.startswith("Fn::") or fn == "Condition":
            raise Unresolved("intrinsic %s is not resolved by this rehearsal" % fn)
    return {k: evaluate(v, ctx) for k, v in node.items()}


def condition(name, ctx):
    return truth(ctx["template"]["Conditions"][name], ctx)


def truth(node, ctx):
    (fn, arg), = node.items()
    if fn == "Condition":
        return condition(arg, ctx)
    if fn == "Fn::Equals":
        a, b = (str(evaluate(v, ctx)) for v in arg)
        return a == b
    if fn == "Fn::Not":
        return not truth(arg[0], ctx)
    if fn == "Fn::And":
        return all(truth(v, ctx) for v in arg)
    if fn == "Fn::Or":
        return any(truth(v, ctx) for v in arg)
    raise Unresolved("condition function %s" % fn)


def create(args):
    cfn = boto3.client("cloudformation")
    with open(args.template_json) as f:
        template = json.load(f)
    template["Resources"] = resolve_find_in_map(template["Resources"], template, params(args.param))
    body = json.dumps(template)
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
    # moto lists a resource it does not create without its logical ID: such a resource is
    # absent here (the rehearsal checks it in the translated template instead).
    for r in cfn.describe_stack_resources(StackName=args.name)["StackResources"]:
        if "LogicalResourceId" not in r:
            continue
        resources[r["LogicalResourceId"]] = {
            "type": r.get("ResourceType"),
            "physical": r.get("PhysicalResourceId"),
            "status": r.get("ResourceStatus"),
        }
    # Each function's environment as the translated template gives it, resolved against what
    # the stack created (and --physical for what moto does not create), values as strings (as
    # Lambda has them). moto's own resolution is printed beside it (functions.*.Environment).
    values = {k: v for k, v in params(args.param).items()}
    for name, p in template.get("Parameters", {}).items():
        values.setdefault(name, str(p.get("Default", "")))
    physical = {k: r["physical"] for k, r in resources.items()}
    physical.update(params(args.physical))
    sqs = boto3.client("sqs")
    attrs = {}
    for logical, r in resources.items():
        if r["type"] == "AWS::SQS::Queue" and r["physical"]:
            a = sqs.get_queue_attributes(QueueUrl=r["physical"], AttributeNames=["QueueArn"])
            attrs[(logical, "Arn")] = a["Attributes"]["QueueArn"]
            attrs[(logical, "QueueName")] = r["physical"].rsplit("/", 1)[1]
    region = os.environ.get("AWS_REGION", "us-east-1")
    ctx = {
        "template": template,
        "params": values,
        "physical": physical,
        "attrs": attrs,
        "pseudo": {
            "AWS::Region": region,
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::StackName": args.name,
            "AWS::NoValue": None,
        },
    }
    functions = {}
    environments = {}
    lam = boto3.client("lambda")
    for logical, r in resources.items():
        if r["type"] == "AWS::Lambda::Function":
            c = lam.get_function_configuration(FunctionName=r["physical"])
            c.pop("ResponseMetadata", None)
            functions[logical] = c
            variables = template["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})
            environments[logical] = {k: str(evaluate(v, ctx)) for k, v in variables.items()}
    logs = boto3.client("logs")
    log_groups = {
        g["logGroupName"]: g.get("retentionInDays") for g in logs.describe_log_groups()["logGroups"]
    }
    events = boto3.client("events")
    rules = {}
    for logical, r in resources.items():
        if r["type"] == "AWS::Events::Rule":
            rule = events.describe_rule(Name=r["physical"])
            rules[logical] = {
                "schedule": rule.get("ScheduleExpression"),
                "state": rule.get("State"),
                "targets": [
                    {"arn": t["Arn"], "input": t.get("Input")}
                    for t in events.list_targets_by_rule(Rule=r["physical"])["Targets"]
                ],
            }
    out = {
        "status": stack["StackStatus"],
        "reason": stack.get("StackStatusReason"),
        "resources": resources,
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "functions": functions,
        "environments": environments,
        "log_groups": log_groups,
        "rules": rules,
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
    c.add_argument("--physical", action="append", help="LOGICAL=ID for a resource moto does not create")
    args = ap.parse_args()
    {"translate": translate, "create": create}[args.cmd](args)


if __name__ == "__main__":
    main()
