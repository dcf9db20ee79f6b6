"""``dsqlkit token``: print an IAM auth token as ``aws dsql generate-db-connect-auth-token``
(``--admin``: ``generate-db-connect-admin-auth-token``) prints it.

The output is the AWS CLI's, byte for byte (the token and a newline), for the same host,
region, credentials, lifetime and second. Differences, all on inputs the AWS CLI would turn
into a token DSQL refuses: the region defaults to the one in the hostname before
``AWS_REGION``/``AWS_DEFAULT_REGION``/the profile, a ``--region`` that contradicts the
hostname is an error, and ``--expires-in`` must lie within DSQL's 1 to 604,800 seconds.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hostname", required=True,
                        help="cluster endpoint, e.g. <cluster-id>.dsql.us-east-1.on.aws")
    parser.add_argument("--region", default=None,
                        help="AWS region (default: from the hostname, AWS_REGION, "
                             "AWS_DEFAULT_REGION, then the profile)")
    parser.add_argument("--admin", action="store_true",
                        help="a DbConnectAdmin token, for the admin role "
                             "(generate-db-connect-admin-auth-token)")
    parser.add_argument("--expires-in", type=int, default=900, metavar="SECONDS",
                        help="token lifetime in seconds, 1 to 604800 (default 900)")
    parser.add_argument("--profile", default=None,
                        help="AWS profile for credentials (default: environment, then the "
                             "default credential chain)")


def run(args: argparse.Namespace) -> int:
    from dsqlkit.auth.sigv4 import ADMIN_ACTION, CONNECT_ACTION, MAX_EXPIRES_IN
    from dsqlkit.auth.tokens import TokenProvider
    from dsqlkit.config import resolve_region
    from dsqlkit.errors import DsqlError

    try:
        hostname = args.hostname.strip()
        if not hostname:
            raise_config("--hostname must not be empty")
        if not 1 <= args.expires_in <= MAX_EXPIRES_IN:
            raise_config(f"--expires-in {args.expires_in} is out of range: DSQL accepts 1 to "
                         f"{MAX_EXPIRES_IN} seconds (default 900)")
        region = resolve_region(args.region, hostname, args.profile, how="pass --region")
        provider = TokenProvider(
            hostname,
            region,
            user="admin" if args.admin else "",
            action=ADMIN_ACTION if args.admin else CONNECT_ACTION,
            expires_in=args.expires_in,
            profile=args.profile,
        )
        token = provider.refresh()
    except DsqlError as exc:
        print(f"dsqlkit token: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(token)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def raise_config(message: str) -> None:
    from dsqlkit.errors import ConfigError

    raise ConfigError(message)
