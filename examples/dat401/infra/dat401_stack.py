"""The DAT401 stack: an Aurora DSQL cluster (chapter 02) and the Python functions of chapters
01, 03, 04 and 05, each allowed to connect to that one cluster and nothing else.

Packaging. The functions share two pieces of code:

* the handlers (``examples/dat401`` minus ``infra/``), a few kilobytes, as each function's
  code: a change to a handler redeploys in seconds;
* dsqlkit and its dependencies (psycopg with its bundled libpq, psycopg-pool, botocore) as one
  **layer**, built from this repository: ``pip wheel`` turns the checkout into a wheel, and
  ``pip install --platform manylinux... --only-binary=:all:`` installs it with the Linux
  wheels of its dependencies for the functions' architecture. A layer rather than bundling
  dsqlkit into every function: the dependencies (~30 MB) are built and uploaded once for the
  three database functions instead of three times, and the handler code stays small enough to
  read in the Lambda console. The build runs on this machine when it has pip and network
  access (no Docker needed, as the wheels are downloaded, not compiled) and falls back to the
  Lambda build image in Docker otherwise.

Permissions. The seed's ``add-dsql-permissions.sh`` granted ``dsql:DbConnect`` and
``dsql:DbConnectAdmin`` on ``Resource: "*"`` -- every cluster in the account. Here each
database function's role gets exactly one action on exactly this cluster's ARN:
``dsql:DbConnectAdmin`` when the functions connect as ``admin``, or ``dsql:DbConnect`` for a
custom database role (context ``dbUser``), which must also be mapped to the function's IAM
role inside the database (``AWS IAM GRANT <role> TO '<role arn>'``; see the README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_dsql as dsql
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

EXAMPLE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = Path(__file__).resolve().parents[3]

RUNTIME = lambda_.Runtime.PYTHON_3_12
PYTHON_VERSION = "3.12"
ARCHITECTURE = lambda_.Architecture.ARM_64
# Wheel tags pip may pick for the layer: psycopg-binary publishes manylinux wheels; Lambda's
# Python 3.12 runtime (Amazon Linux 2023, glibc 2.34) runs both of these.
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")

# dsqlkit depends on plain psycopg, which loads the system's libpq; Lambda's runtime has none,
# so the layer adds psycopg's binary build (what 'dsqlkit[binary]' adds; spelled as a plain
# requirement, as the Docker build runs the command through bash, where [...] is a pattern).
LAYER_EXTRAS = ("psycopg-binary",)

# (chapter, needs the database, extra environment)
CHAPTERS: tuple[tuple[str, bool, dict[str, str]], ...] = (
    ("ch01", False, {}),
    ("ch03", True, {}),
    ("ch04", True, {}),
    ("ch05", True, {
        "OCC_MAX_ATTEMPTS": "20",
        "OCC_BASE_DELAY_MS": "100",
        "OCC_MAX_DELAY_MS": "100",
        "OCC_JITTER": "0.25",
        "OCC_DEADLINE_MS": "10000",
    }),
)

# The layer is built from the package sources only: the hash (and so a rebuild) changes when
# they do, not when tests or docs change.
_LAYER_SOURCES_ONLY = [
    "*", "!pyproject.toml", "!README.md", "!LICENSE*", "!src", "!src/**",
    "**/__pycache__", "**/*.pyc",
]
_FUNCTION_CODE_EXCLUDES = ["infra", "infra/**", "sql", "setup_db.py", "**/__pycache__",
                           "**/*.pyc", "*.md", "*.txt", ".*"]


def _pip_commands(source: str, output: str, wheel_dir: str, python: str) -> list[list[str]]:
    """Build dsqlkit's wheel from ``source`` and install it with its dependencies' Linux
    wheels into ``output/python`` (where Lambda puts layer contents on ``sys.path``)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheel_dir, source],
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "--target",
         f"{output}/python",
         *platforms, "--implementation", "cp", "--python-version", PYTHON_VERSION,
         "--only-binary=:all:", "--upgrade", *LAYER_EXTRAS, f"{wheel_dir}/dsqlkit-*.whl"],
    ]


@jsii.implements(cdk.ILocalBundling)
class _PipOnThisMachine:
    """Build the layer with this machine's pip; ``False`` (use Docker) if that fails."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def try_bundle(self, output_dir: str, options: Any = None, **_: Any) -> bool:
        with tempfile.TemporaryDirectory(prefix="dsqlkit-wheel-") as wheels:
            build, install = _pip_commands(str(self.source), output_dir, wheels,
                                           sys.executable)
            try:
                subprocess.run(build, check=True)
                # The wheel's file name is known only now (bash expands it in Docker).
                wheel = sorted(Path(wheels).glob("dsqlkit-*.whl"))[-1]
                subprocess.run([*install[:-1], str(wheel)], check=True)
            except (OSError, IndexError, subprocess.CalledProcessError) as exc:
                print(f"building the layer with local pip failed ({exc}); trying Docker",
                      file=sys.stderr)
                shutil.rmtree(os.path.join(output_dir, "python"), ignore_errors=True)
                return False
        return True


def dsqlkit_layer(scope: Construct, construct_id: str) -> lambda_.LayerVersion:
    """dsqlkit and its dependencies, built from this repository, as a Lambda layer."""
    docker_commands = _pip_commands("/asset-input", "/asset-output", "/tmp/wheels", "python")
    script = " && ".join(" ".join(c) for c in docker_commands)
    return lambda_.LayerVersion(
        scope, construct_id,
        description="dsqlkit (Aurora DSQL connector, OCC retry) with psycopg, psycopg-pool, "
                    "botocore",
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCHITECTURE],
        code=lambda_.Code.from_asset(
            str(REPO_ROOT),
            exclude=_LAYER_SOURCES_ONLY,
            bundling=cdk.BundlingOptions(
                image=RUNTIME.bundling_image,
                platform="linux/arm64",
                command=["bash", "-c", script],
                local=_PipOnThisMachine(REPO_ROOT),
            ),
        ),
    )


class Dat401Stack(cdk.Stack):
    """The cluster, the layer, four functions, and least-privilege DSQL access."""

    def __init__(self, scope: Construct, construct_id: str, *, db_user: str = "admin",
                 prefix: str = "dat401", **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)

        # Chapter 02: the cluster. No deletion protection, so `cdk destroy` removes it.
        cluster = dsql.CfnCluster(
            self, "DsqlCluster",
            deletion_protection_enabled=False,
            tags=[cdk.CfnTag(key="Name", value=prefix)],
        )
        endpoint = f"{cluster.attr_identifier}.dsql.{self.region}.on.aws"
        cdk.CfnOutput(self, "ClusterId", value=cluster.attr_identifier,
                      description="Aurora DSQL cluster ID")
        cdk.CfnOutput(self, "ClusterEndpoint", value=endpoint,
                      description="Aurora DSQL cluster endpoint (CLUSTER_ENDPOINT)")

        # The one permission the database functions need, on this cluster only.
        action = "dsql:DbConnectAdmin" if db_user == "admin" else "dsql:DbConnect"

        layer = dsqlkit_layer(self, "DsqlkitLayer")
        code = lambda_.Code.from_asset(str(EXAMPLE_DIR), exclude=_FUNCTION_CODE_EXCLUDES)
        self.functions: dict[str, lambda_.Function] = {}
        for chapter, uses_db, extra_env in CHAPTERS:
            environment = dict(extra_env)
            if uses_db:
                environment.update(CLUSTER_ENDPOINT=endpoint, CLUSTER_USER=db_user)
            log_group = logs.LogGroup(
                self, f"{chapter.capitalize()}Logs",
                log_group_name=f"/aws/lambda/{prefix}-{chapter}",
                retention=logs.RetentionDays.ONE_WEEK,
                removal_policy=cdk.RemovalPolicy.DESTROY,
            )
            fn = lambda_.Function(
                self, f"{chapter.capitalize()}Function",
                function_name=f"{prefix}-{chapter}",
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                handler=f"{chapter}.handler.handler",
                code=code,
                layers=[layer] if uses_db else [],
                environment=environment,
                memory_size=512,
                timeout=cdk.Duration.seconds(30),
                log_group=log_group,
            )
            if uses_db:
                fn.add_to_role_policy(iam.PolicyStatement(
                    actions=[action], resources=[cluster.attr_resource_arn]))
                assert fn.role is not None
                # Needed to map a custom database role to this function's IAM role.
                cdk.CfnOutput(self, f"{chapter.capitalize()}RoleArn", value=fn.role.role_arn)
            cdk.CfnOutput(self, f"{chapter.capitalize()}FunctionName", value=fn.function_name)
            self.functions[chapter] = fn
