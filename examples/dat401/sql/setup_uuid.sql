-- DAT401: 1,000 UUID-keyed accounts, each with a balance of 100 (ids from gen_random_uuid()).
DELETE FROM accounts_uuid;
INSERT INTO accounts_uuid (balance) SELECT 100 FROM generate_series(1, 1000);
