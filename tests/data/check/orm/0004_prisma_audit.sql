-- CreateEnum
CREATE TYPE "AuditKind" AS ENUM ('CREATED', 'UPDATED', 'DELETED');

-- CreateTable
CREATE TABLE "AuditLog" (
    "id" SERIAL NOT NULL,
    "kind" "AuditKind" NOT NULL,
    "taskId" BIGINT,
    "changes" JSONB NOT NULL,
    "fields" TEXT[],
    "at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "AuditLog_taskId_at_idx" ON "AuditLog"("taskId", "at");

-- AddForeignKey
ALTER TABLE "AuditLog" ADD CONSTRAINT "AuditLog_taskId_fkey" FOREIGN KEY ("taskId") REFERENCES "tasks_task"("id") ON DELETE SET NULL ON UPDATE CASCADE;
