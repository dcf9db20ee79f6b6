"""``dsqlkit local run -- COMMAND``: the command finds the endpoint as code written for a real
cluster finds one (by the cluster's name, through the environment, the AWS CLI's token
commands and the system trust store), and the endpoint goes away with the command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsqlkit.local import awscli, hosts

CLUSTER_ID = "compatcheck0123456789abcde"
HOSTNAME = f"{CLUSTER_ID}.dsql.us-east-1.on.aws"

# Run by `dsqlkit local run` as the command: it connects as DSQL code does and reports.
CLIENT = textwrap.dedent("""
    import asyncio, os, pathlib, ssl, subprocess, sys
    import asyncpg, psycopg

    host = os.environ["CLUSTER_ENDPOINT"]
    assert host == sys.argv[1], host
    assert os.environ["CLUSTER_USER"] == "admin" and os.environ["REGION"] == "us-east-1"
    assert "AWS_PROFILE" not in os.environ and "AWS_SESSION_TOKEN" not in os.environ
    # The hosts file given with --etc-hosts has the cluster's line while the command runs.
    assert f"127.0.0.1 {host}  # dsqlkit-local pid=" in pathlib.Path(sys.argv[2]).read_text()
    # DSQL's samples find the CA in ./root.pem.
    assert pathlib.Path("root.pem").read_bytes() == pathlib.Path(
        os.environ["PGSSLROOTCERT"]).read_bytes()
    # libpq, by name, trusting the system store (which now holds the endpoint's CA), with
    # the PGPASSWORD the command was given.
    with psycopg.connect(host=host, sslrootcert="system") as conn:
        session = conn.execute("SELECT sys.current_session_id()").fetchone()[0]
    # The AWS CLI v2 command the shell samples use, then asyncpg with ssl=True.
    token = subprocess.run(
        ["aws", "dsql", "generate-db-connect-admin-auth-token", "--hostname", host,
         "--region", os.environ["AWS_REGION"], "--expires-in", "60"],
        check=True, capture_output=True, text=True).stdout.strip()
    assert token.startswith(host + "/?Action=DbConnectAdmin&"), token[:80]

    async def main():
        c = await asyncpg.connect(host=host, user="admin", database="postgres",
                                  password=token, ssl=True)
        try:
            return await c.fetchval("SELECT sys.current_session_id()")
        finally:
            await c.close()

    assert asyncio.run(main()) != session
    sys.exit(7)
""")


def dsqlkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsqlkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_command_reaches_the_endpoint_by_the_clusters_name(tmp_path: Path) -> None:
    etc_hosts = tmp_path / "hosts"
    # A line of ours whose process is gone (an endpoint killed before it could clean up),
    # and a line of someone else's.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = hosts.line_for("old.dsql.us-east-1.on.aws", pid=int(dead.stdout))
    etc_hosts.write_text(f"10.0.0.1 db.example.com\n{stale}\n")
    (tmp_path / "client.py").write_text(CLIENT)
    env = {**os.environ, "AWS_PROFILE": "someone-else", "AWS_SESSION_TOKEN": "stale"}
    env.pop("PGHOSTADDR", None)
    done = dsqlkit("local", "run", "--ephemeral", "--cluster-id", CLUSTER_ID, "--root-pem",
                   "--etc-hosts", str(etc_hosts), "--",
                   sys.executable, "client.py", HOSTNAME, str(etc_hosts),
                   cwd=tmp_path, env=env)
    assert done.returncode == 7, done.stdout + done.stderr
    assert f"cluster {HOSTNAME}" in done.stderr
    # Afterwards: our line and the stale one are gone, the other one stays; so is root.pem.
    assert etc_hosts.read_text() == "10.0.0.1 db.example.com\n"
    assert not (tmp_path / "root.pem").exists()


def test_an_existing_root_pem_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_text("Amazon Root CA 1\n")
    done = dsqlkit("local", "run", "--ephemeral", "--port", "0", "--root-pem", "--",
                   sys.executable, "-c", "print(open('root.pem').read())", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Amazon Root CA 1\n\n"
    assert (tmp_path / "root.pem").read_text() == "Amazon Root CA 1\n"
    assert "root.pem exists; left as it is" in done.stderr


def test_options_after_run_and_before_it(tmp_path: Path) -> None:
    script = "import os; print(os.environ['CLUSTER_ENDPOINT'], os.environ['PGPORT'])"
    done = dsqlkit("local", "--region", "eu-west-1", "run", "--ephemeral", "--port", "0",
                   "--cluster-id", CLUSTER_ID, "--", sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    name, port = done.stdout.split()
    assert name == f"{CLUSTER_ID}.dsql.eu-west-1.on.aws" and port != "5432"


@pytest.mark.parametrize(("args", "message", "code"), [
    (["--cluster-id", "Not-An-Id", "--", "true"], "is not a DSQL cluster id", 2),
    ([], "give the command to run after --", 2),
    (["--ephemeral", "--port", "0", "--", "no-such-command-here"], "command not found", 127),
])
def test_run_refusals(args: list[str], message: str, code: int) -> None:
    done = dsqlkit("local", "run", *args)
    assert done.returncode == code
    assert message in done.stderr


# ---------------------------------------------------------------- the aws shim


@pytest.mark.parametrize(("argv", "expected"), [
    (["dsql", "generate-db-connect-admin-auth-token", "--hostname", "h", "--region", "r"],
     {"hostname": "h", "region": "r", "admin": "yes"}),
    (["--region=r", "dsql", "generate-db-connect-auth-token", "--hostname=h",
      "--expires-in", "60", "--output", "text", "--no-cli-pager"],
     {"hostname": "h", "region": "r", "expires-in": "60", "output": "text", "admin": ""}),
    (["s3", "ls"], None),
    (["dsql", "list-clusters"], None),
    (["dsql", "generate-db-connect-auth-token", "--hostname", "h", "--unknown", "x"], None),
])
def test_which_aws_commands_the_shim_answers(argv: list[str],
                                             expected: dict[str, str] | None) -> None:
    assert awscli.parse_token_command(argv) == expected


def test_the_shim_hands_other_commands_to_the_real_aws(tmp_path: Path) -> None:
    shim, real = tmp_path / "shim", tmp_path / "real"
    shim.mkdir()
    real.mkdir()
    (shim / "aws").write_text("#!/bin/sh\necho shim\n")
    (real / "aws").write_text('#!/bin/sh\necho "real aws: $*"\n')
    for f in (shim / "aws", real / "aws"):
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{real}{os.pathsep}/usr/bin:/bin",
           awscli.SHIM_DIR_ENV: str(shim)}
    done = subprocess.run([sys.executable, "-m", "dsqlkit.local.awscli", "s3", "ls"],
                          env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "real aws: s3 ls\n")
    env["PATH"] = f"{shim}{os.pathsep}/nonexistent"
    done = subprocess.run([sys.executable, "-m", "dsqlkit.local.awscli", "s3", "ls"],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 127 and "the AWS CLI is not installed" in done.stderr


# ---------------------------------------------------------------- the hosts file


def test_hosts_entry_is_added_once_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    entry = hosts.HostsEntry(HOSTNAME, path)
    entry.add()
    entry.add()
    assert path.read_text() == f"127.0.0.1 localhost\n{hosts.line_for(HOSTNAME)}\n"
    entry.remove()
    assert path.read_text() == "127.0.0.1 localhost\n"


def test_an_unwritable_hosts_file_says_what_to_add(tmp_path: Path) -> None:
    entry = hosts.HostsEntry(HOSTNAME, tmp_path / "missing" / "hosts")
    with pytest.raises(Exception, match=f"add this line yourself: 127.0.0.1 {HOSTNAME}"):
        entry.add()
