"""DSQL's optimistic concurrency in the local endpoint: the engine that decides (no I/O), the
lock monitor that turns PostgreSQL's lock waits into its input, and the lock-free dry runs a
losing transaction answers with."""

from dsqlkit.local.occ.dryrun import DryRun, dry_run

__all__ = ["DryRun", "dry_run"]
