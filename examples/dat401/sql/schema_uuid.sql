-- DAT401: the same accounts, keyed by random UUIDs (ACCOUNTS_KEY=uuid selects this table).
--
-- Choosing a primary key on DSQL: rows are stored, and spread over storage, in primary-key
-- order. Random keys (UUID v4, gen_random_uuid()) spread new rows over the whole key space,
-- so inserts from many writers land on many ranges at once and write throughput scales out.
-- Sequential keys (identity columns, sequences, timestamps) send every insert to the end of
-- the key space: one hot range, the bottleneck of an insert-heavy table. For the transfers of
-- this demo, which update existing rows, the key type does not change conflicts: DSQL detects
-- conflicts per row written, so only transfers touching the same account collide, whatever
-- the keys look like. Integer ids stay handy for a demo (ids 1-1000 are easy to type); a new
-- table that grows by inserts should default to UUIDs.
CREATE TABLE IF NOT EXISTS accounts_uuid (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  balance numeric
);
