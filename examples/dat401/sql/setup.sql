-- DAT401: 1,000 accounts, ids 1 to 1000, each with a balance of 100.
-- Each statement is its own transaction (autocommit); both stay well under DSQL's limit on
-- rows modified by one transaction.
DELETE FROM accounts;
INSERT INTO accounts (id, balance) SELECT generate_series(1, 1000), 100;
