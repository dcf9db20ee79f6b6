"""The DAT401 CDK app, synthesized offline: the cluster, the four functions and their layer,
and least-privilege IAM (one DSQL action, on this cluster's ARN, for the functions that need it).

Bundling is switched off (``aws:cdk:bundling-stacks``) so no pip runs here; the layer's build
commands are checked on their own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dat401_support import EXAMPLES

if shutil.which("node") is None:
    pytest.skip("the AWS CDK (jsii) needs Node.js, which is not installed",
                allow_module_level=True)
# jsii prints a banner on Node versions it no longer tests; it says nothing about our stack.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
cdk = pytest.importorskip(
    "aws_cdk", reason="the AWS CDK is not installed: pip install -e '.[aws]' (.ci/run does)")
from aws_cdk.assertions import Match, Template  # noqa: E402

from dsqlkit.occ import OCCRetryConfig  # noqa: E402

INFRA = EXAMPLES / "infra"
CLUSTER_ARN = {"Fn::GetAtt": ["DsqlCluster", "ResourceArn"]}
ENDPOINT = {"Fn::Join": ["", [{"Fn::GetAtt": ["DsqlCluster", "Identifier"]},
                              ".dsql.us-west-2.on.aws"]]}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"dat401_infra_{name}", INFRA / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both variants in one app (one synthesis): admin, and a mapped database role."""
    app_module = load("app")
    out = tmp_path_factory.mktemp("cdk.out")
    app = cdk.App(outdir=str(out), context={"aws:cdk:bundling-stacks": []})
    env = cdk.Environment(account="123456789012", region="us-west-2")
    stack_module = load("dat401_stack")
    admin = stack_module.Dat401Stack(app, "Admin", env=env)
    mapped = stack_module.Dat401Stack(app, "Mapped", env=env, db_user="myapp", prefix="bank")
    assembly = app.synth()
    # The entry point `cdk deploy` runs builds the same stack from context.
    context_app = app_module.build_app(cdk.App(
        outdir=str(tmp_path_factory.mktemp("cdk.ctx")),
        context={"aws:cdk:bundling-stacks": [], "dbUser": "reader", "prefix": "demo"}))
    stacks = [c for c in context_app.node.children if isinstance(c, cdk.Stack)]
    return {
        "admin": Template.from_stack(admin), "mapped": Template.from_stack(mapped),
        "admin_stack": admin, "out": Path(assembly.directory), "module": stack_module,
        "context_stacks": [(s.stack_name, s) for s in stacks],
    }


def functions(template: Any) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::Lambda::Function")
    return {props["Properties"]["FunctionName"]: {"id": logical, **props["Properties"]}
            for logical, props in found.items()}


def test_cluster_and_outputs(synth: dict[str, Any]) -> None:
    t = synth["admin"]
    t.resource_count_is("AWS::DSQL::Cluster", 1)
    t.has_resource_properties("AWS::DSQL::Cluster", {
        "DeletionProtectionEnabled": False,
        "Tags": [{"Key": "Name", "Value": "dat401"}],
    })
    outputs = t.to_json()["Outputs"]
    assert outputs["ClusterId"]["Value"] == {"Fn::GetAtt": ["DsqlCluster", "Identifier"]}
    assert outputs["ClusterEndpoint"]["Value"] == ENDPOINT
    for chapter in ("ch01", "ch03", "ch04", "ch05"):
        assert f"{chapter.capitalize()}FunctionName" in outputs
        # Role ARNs (for mapping a custom database role) only where a role connects.
        assert (f"{chapter.capitalize()}RoleArn" in outputs) == (chapter != "ch01")


def test_functions(synth: dict[str, Any]) -> None:
    t = synth["admin"]
    fns = functions(t)
    # ch02 is the cluster itself.
    assert sorted(fns) == ["dat401-ch01", "dat401-ch03", "dat401-ch04", "dat401-ch05"]
    layers = t.find_resources("AWS::Lambda::LayerVersion")
    assert len(layers) == 1
    (layer_id, layer), = layers.items()
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    for name, fn in fns.items():
        chapter = name.split("-")[1]
        assert fn["Handler"] == f"{chapter}.handler.handler"
        assert (fn["Runtime"], fn["Architectures"], fn["Timeout"], fn["MemorySize"]) == (
            "python3.12", ["arm64"], 30, 512)
        variables = fn.get("Environment", {}).get("Variables", {})
        if chapter == "ch01":
            assert "Layers" not in fn and "CLUSTER_ENDPOINT" not in variables
            continue
        assert fn["Layers"] == [{"Ref": layer_id}]
        assert variables["CLUSTER_ENDPOINT"] == ENDPOINT
        assert variables["CLUSTER_USER"] == "admin"
    occ = fns["dat401-ch05"]["Environment"]["Variables"]
    # The deployed retry settings are a valid policy (ch05 reads them the same way).
    OCCRetryConfig(max_attempts=int(occ["OCC_MAX_ATTEMPTS"]),
                   base_delay=float(occ["OCC_BASE_DELAY_MS"]) / 1000,
                   max_delay=float(occ["OCC_MAX_DELAY_MS"]) / 1000,
                   jitter_factor=float(occ["OCC_JITTER"]),
                   deadline=float(occ["OCC_DEADLINE_MS"]) / 1000)
    assert "OCC_MAX_ATTEMPTS" not in fns["dat401-ch04"]["Environment"]["Variables"]


def statements(template: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for logical, policy in template.find_resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            out.append((logical, statement))
    return out


@pytest.mark.parametrize(("variant", "action"), [("admin", "dsql:DbConnectAdmin"),
                                                 ("mapped", "dsql:DbConnect")])
def test_least_privilege(synth: dict[str, Any], variant: str, action: str) -> None:
    t = synth[variant]
    fns = functions(t)
    policies = t.find_resources("AWS::IAM::Policy")
    # One inline policy per database function, with exactly one statement: one action on
    # this cluster's ARN. No wildcard resource, no other DSQL action, nothing for ch01.
    assert len(policies) == 3
    for policy in policies.values():
        assert policy["Properties"]["PolicyDocument"]["Statement"] == [
            {"Action": action, "Effect": "Allow", "Resource": CLUSTER_ARN}]
    roles = {p["Properties"]["Roles"][0]["Ref"] for p in policies.values()}
    db_roles = {fn["Role"]["Fn::GetAtt"][0] for name, fn in fns.items()
                if not name.endswith("ch01")}
    assert roles == db_roles
    for _, statement in statements(t):
        assert statement["Resource"] != "*"
        assert "*" not in str(statement["Action"])
    # The roles themselves carry only the basic logging policy.
    for role in t.find_resources("AWS::IAM::Role").values():
        managed = role["Properties"]["ManagedPolicyArns"]
        assert len(managed) == 1 and "AWSLambdaBasicExecutionRole" in str(managed)
        assert "Policies" not in role["Properties"]
    if variant == "mapped":
        for fn in fns.values():
            if "Layers" in fn:
                assert fn["Environment"]["Variables"]["CLUSTER_USER"] == "myapp"
        assert sorted(fns) == ["bank-ch01", "bank-ch03", "bank-ch04", "bank-ch05"]


def test_the_app_reads_its_context(synth: dict[str, Any]) -> None:
    (name, stack), = synth["context_stacks"]
    assert name == "DemoStack"
    t = Template.from_stack(stack)
    t.has_resource_properties("AWS::Lambda::Function", {
        "FunctionName": "demo-ch04",
        "Environment": {"Variables": Match.object_like({"CLUSTER_USER": "reader"})},
    })
    t.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": [
        Match.object_like({"Action": "dsql:DbConnect"})]}})


def test_function_code_is_the_handlers_and_the_shared_module(synth: dict[str, Any]) -> None:
    t, out = synth["admin"], synth["out"]
    assets = {p.name: p for p in out.glob("asset.*")}
    fn = functions(t)["dat401-ch04"]
    key = fn["Code"]["S3Key"].removesuffix(".zip")
    code = assets[f"asset.{key}"]
    files = sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file())
    assert files == ["bank.py", "ch01/handler.py", "ch03/handler.py", "ch04/handler.py",
                     "ch05/handler.py"]


def test_layer_build_installs_linux_wheels_for_the_function_architecture(
    synth: dict[str, Any],
) -> None:
    module = synth["module"]
    build, install = module._pip_commands("/src", "/out", "/wheels", "python")
    assert build[:4] == ["python", "-m", "pip", "wheel"] and build[-1] == "/src"
    assert install[install.index("--target") + 1] == "/out/python"
    platforms = [install[i + 1] for i, arg in enumerate(install) if arg == "--platform"]
    arch = "aarch64" if module.ARCHITECTURE.name == "arm64" else "x86_64"
    assert platforms and all(p.endswith(arch) for p in platforms)
    assert install[install.index("--python-version") + 1] == module.RUNTIME.name.removeprefix(
        "python")
    assert "--only-binary=:all:" in install
    # dsqlkit needs a libpq and Lambda has none: the layer brings psycopg's binary build.
    assert "psycopg-binary" in install
