-- Running upgrade 0004 -> 0005 (Alembic offline mode, transaction_per_migration)
BEGIN;

CREATE SEQUENCE task_number_seq START 1000;

ALTER TABLE tasks_task ADD COLUMN number INTEGER DEFAULT nextval('task_number_seq');

ALTER TABLE tasks_task ADD COLUMN search_vector TSVECTOR;

CREATE INDEX ix_tasks_task_search_vector ON tasks_task USING gin (search_vector);

SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004';

COMMIT;
