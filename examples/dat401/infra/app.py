#!/usr/bin/env python3
"""The CDK app: ``cdk deploy`` (run from this directory) deploys :class:`Dat401Stack`.

Context (``cdk deploy -c key=value``):

``prefix``  names the stack, the functions (``<prefix>-ch04``) and the cluster tag; default
            ``dat401``
``dbUser``  the database role the functions connect as; default ``admin``
            (``dsql:DbConnectAdmin``); any other role gets ``dsql:DbConnect``
"""

from __future__ import annotations

import os
import sys

import aws_cdk as cdk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dat401_stack import Dat401Stack


def build_app(app: cdk.App | None = None) -> cdk.App:
    app = app or cdk.App()
    prefix = app.node.try_get_context("prefix") or "dat401"
    db_user = app.node.try_get_context("dbUser") or "admin"
    Dat401Stack(
        app, f"{prefix.capitalize()}Stack", prefix=prefix, db_user=db_user,
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                            region=os.environ.get("CDK_DEFAULT_REGION")),
    )
    return app


if __name__ == "__main__":
    build_app().synth()
