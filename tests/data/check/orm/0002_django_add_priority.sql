BEGIN;
--
-- Add field priority to task
--
ALTER TABLE "tasks_task" ADD COLUMN "priority" smallint DEFAULT 3 NOT NULL CHECK ("priority" >= 0);
ALTER TABLE "tasks_task" ALTER COLUMN "priority" DROP DEFAULT;
--
-- Alter field title on task
--
ALTER TABLE "tasks_task" ALTER COLUMN "title" TYPE varchar(300);
--
-- Alter field due on task
--
UPDATE "tasks_task" SET "due" = CURRENT_DATE WHERE "due" IS NULL;
ALTER TABLE "tasks_task" ALTER COLUMN "due" SET NOT NULL;
COMMIT;
