-- DAT401: the accounts table (integer keys).
-- DSQL runs one DDL statement per transaction and no DDL next to DML: run this file with
-- autocommit, as psql and setup_db.py do. An unqualified NUMERIC is numeric(18,6) on DSQL.
CREATE TABLE IF NOT EXISTS accounts (
  id int PRIMARY KEY,
  balance numeric
);
