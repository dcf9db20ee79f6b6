-- dsqlkit local catalog version 3 (commit 94228bc), as bootstrap() ran it: the state an

-- older data directory is in, for tests/test_local_catalog.py.

DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'admin') THEN
           CREATE ROLE admin SUPERUSER LOGIN;
         END IF;
       END $$;

CREATE SCHEMA IF NOT EXISTS sys AUTHORIZATION admin;

GRANT USAGE ON SCHEMA sys TO PUBLIC;

CREATE TABLE IF NOT EXISTS sys.dsqlkit_oversize (
         txid xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
         megabytes bigint NOT NULL);

CREATE OR REPLACE FUNCTION sys.dsqlkit_oversize_at_commit() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION USING ERRCODE = '54000',
           MESSAGE = 'transaction size limit 10mb exceeded',
           DETAIL = format('Current transaction size %smb > 10mb', NEW.megabytes);
       END $$;

DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'dsqlkit_oversize_check') THEN
           CREATE CONSTRAINT TRIGGER dsqlkit_oversize_check AFTER INSERT
             ON sys.dsqlkit_oversize DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION sys.dsqlkit_oversize_at_commit();
         END IF;
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_count(changed bigint, bytes bigint) RETURNS void
       LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
       DECLARE
         n bigint := coalesce(nullif(current_setting('dsqlkit.rows', true), ''), '0')::bigint
                     + changed;
         b bigint := coalesce(nullif(current_setting('dsqlkit.bytes', true), ''), '0')::bigint
                     + bytes;
       BEGIN
         IF n > 3000 THEN
           RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
         END IF;
         PERFORM set_config('dsqlkit.rows', n::text, true);
         PERFORM set_config('dsqlkit.bytes', b::text, true);
         IF b > 10485760
            AND coalesce(current_setting('dsqlkit.oversize', true), '') = '' THEN
           PERFORM set_config('dsqlkit.oversize', 'on', true);
           INSERT INTO sys.dsqlkit_oversize (megabytes) VALUES (ceil(b / 1048576.0)::bigint);
         ELSIF b > 10485760 THEN
           UPDATE sys.dsqlkit_oversize SET megabytes = ceil(b / 1048576.0)::bigint
             WHERE txid = pg_current_xact_id();
         END IF;
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_count_new() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM sys.dsqlkit_count(
           (SELECT count(*) FROM dsqlkit_new),
           (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM dsqlkit_new t));
         RETURN NULL;
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_count_old() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM sys.dsqlkit_count(
           (SELECT count(*) FROM dsqlkit_old),
           (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM dsqlkit_old t));
         RETURN NULL;
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_add_limit_triggers(rel regclass) RETURNS void
       LANGUAGE plpgsql AS $$
       BEGIN
         IF NOT EXISTS (SELECT FROM pg_trigger
                        WHERE tgrelid = rel AND tgname = 'dsqlkit_limits_insert') THEN
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_insert AFTER INSERT ON %s '
             'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
             'EXECUTE FUNCTION sys.dsqlkit_count_new()', rel);
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_update AFTER UPDATE ON %s '
             'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
             'EXECUTE FUNCTION sys.dsqlkit_count_new()', rel);
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_delete AFTER DELETE ON %s '
             'REFERENCING OLD TABLE AS dsqlkit_old FOR EACH STATEMENT '
             'EXECUTE FUNCTION sys.dsqlkit_count_old()', rel);
         END IF;
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_on_create_table() RETURNS event_trigger
       LANGUAGE plpgsql AS $$
       DECLARE obj record;
       BEGIN
         FOR obj IN SELECT * FROM pg_event_trigger_ddl_commands()
                    WHERE object_type = 'table'
                      AND schema_name NOT IN ('sys', 'pg_catalog', 'information_schema')
                      AND schema_name NOT LIKE 'pg_temp%' LOOP
           PERFORM sys.dsqlkit_add_limit_triggers(obj.objid::regclass);
         END LOOP;
       END $$;

DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'dsqlkit_limits') THEN
           CREATE EVENT TRIGGER dsqlkit_limits ON ddl_command_end
             WHEN TAG IN ('CREATE TABLE')
             EXECUTE FUNCTION sys.dsqlkit_on_create_table();
         END IF;
       END $$;

CREATE TABLE IF NOT EXISTS sys.dsqlkit_jobs (
         job_id text PRIMARY KEY,
         status text NOT NULL DEFAULT 'submitted',
         details text,
         job_type text NOT NULL,
         class_id oid,
         object_id oid,
         object_name text,
         start_time timestamptz NOT NULL DEFAULT now(),
         update_time timestamptz NOT NULL DEFAULT now(),
         relation text,
         statement text NOT NULL);

CREATE OR REPLACE VIEW sys.jobs AS
       SELECT job_id, status, details, job_type, class_id, object_id, object_name,
              start_time, update_time
         FROM sys.dsqlkit_jobs;

GRANT SELECT ON sys.jobs TO PUBLIC;

ALTER TABLE sys.dsqlkit_jobs ADD COLUMN IF NOT EXISTS prepared text;

ALTER TABLE sys.dsqlkit_jobs ADD COLUMN IF NOT EXISTS submitted_by name;

CREATE OR REPLACE FUNCTION sys.dsqlkit_record_job(
         id text, kind text, statement text, object_name text, relation text,
         prepared text, index_oid oid) RETURNS void
       LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
       BEGIN
         IF prepared IS NOT NULL AND NOT EXISTS (
              SELECT FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
               WHERE i.indexrelid = index_oid AND pg_has_role(session_user, t.relowner, 'USAGE')
                 AND (prepared <> 'built' OR (i.indisvalid AND i.indisready))) THEN
           RAISE EXCEPTION USING ERRCODE = '42501',
             MESSAGE = 'must be owner of the index''s table';
         END IF;
         IF prepared = 'built' THEN
           UPDATE pg_index SET indisvalid = false WHERE indexrelid = index_oid;
         END IF;
         -- DSQL purges finished jobs after 30 minutes.
         DELETE FROM sys.dsqlkit_jobs WHERE status IN ('completed', 'failed')
           AND update_time < now() - interval '30 minutes';
         INSERT INTO sys.dsqlkit_jobs (job_id, job_type, statement, object_name, relation,
                                       class_id, object_id, prepared, submitted_by)
           VALUES (id, kind, statement,
                   coalesce((SELECT relname FROM pg_class WHERE oid = index_oid), object_name),
                   relation, 1259, index_oid, prepared, session_user);
         PERFORM pg_notify('dsqlkit_jobs', id);
       END $$;

CREATE OR REPLACE FUNCTION sys.dsqlkit_submit_job(
         id text, kind text, statement text, object_name text, relation text) RETURNS text
       LANGUAGE plpgsql SECURITY INVOKER SET client_min_messages = warning AS $$
       DECLARE
         rel regclass;
         existing oid[];
         made oid;
         found oid;
         prepared text;
       BEGIN
         -- dsqlkit.inline_index_builds = off (set on a role or the database, in the
         -- backend) leaves every build to the job, as CREATE INDEX CONCURRENTLY.
         IF kind = 'INDEX_BUILD' AND coalesce(nullif(pg_catalog.current_setting(
              'dsqlkit.inline_index_builds', true), ''), 'on') <> 'off' THEN
           rel := pg_catalog.to_regclass(relation);
         END IF;
         IF rel IS NOT NULL THEN
           existing := ARRAY(SELECT i.indexrelid FROM pg_catalog.pg_index i
                              WHERE i.indrelid = rel);
           BEGIN
             EXECUTE pg_catalog.regexp_replace(statement, '\mCONCURRENTLY\M', '', 'i');
             SELECT i.indexrelid INTO made FROM pg_catalog.pg_index i
              WHERE i.indrelid = rel AND i.indexrelid <> ALL (existing);
             IF made IS NOT NULL THEN
               prepared := 'built';
             ELSE
               SELECT c.oid INTO found FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index i
                   ON i.indexrelid = c.oid
                WHERE i.indrelid = rel AND c.relname = object_name;
               prepared := CASE WHEN found IS NOT NULL THEN 'exists' END;
             END IF;
           EXCEPTION
             WHEN insufficient_privilege THEN RAISE;
             WHEN OTHERS THEN
               made := NULL;
               prepared := NULL;
           END;
         END IF;
         PERFORM sys.dsqlkit_record_job(id, kind, statement, object_name, relation, prepared,
                                        coalesce(made, found));
         RETURN id;
       END $$;

CREATE OR REPLACE FUNCTION sys.current_session_id() RETURNS text
       LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
       -- DSQL's session id, read as text by every client of it; 26 characters of the
       -- alphabet of DSQL's other ids, derived from what makes a backend session unique.
       SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz234567', get_byte(h, i) % 32 + 1, 1),
                         '' ORDER BY i)
         FROM (SELECT sha256(convert_to(format('%s/%s/%s', pg_backend_pid(),
                 (SELECT extract(epoch FROM a.backend_start)
                    FROM pg_stat_get_activity(pg_backend_pid()) a),
                 extract(epoch FROM pg_postmaster_start_time())), 'UTF8')) AS h) AS s,
              generate_series(0, 25) AS i
       $$;

GRANT EXECUTE ON FUNCTION sys.current_session_id() TO PUBLIC;

CREATE OR REPLACE PROCEDURE sys.wait_for_job(job_id text, INOUT succeeded boolean
         DEFAULT NULL) LANGUAGE plpgsql AS $$
       DECLARE st text;
       BEGIN
         LOOP
           SELECT j.status INTO st FROM sys.jobs j WHERE j.job_id = wait_for_job.job_id;
           IF st IS NULL THEN
             RAISE EXCEPTION USING ERRCODE = '42704',
               MESSAGE = format('job %s does not exist', wait_for_job.job_id);
           END IF;
           IF st IN ('completed', 'failed') THEN
             succeeded := st = 'completed';
             RETURN;
           END IF;
           COMMIT;
           PERFORM pg_sleep(0.02);
         END LOOP;
       END $$;

GRANT EXECUTE ON PROCEDURE sys.wait_for_job(text, boolean) TO PUBLIC;

CREATE TABLE IF NOT EXISTS sys.dsqlkit_iam_mappings (
         iam_oid bigint GENERATED ALWAYS AS IDENTITY,
         arn text NOT NULL,
         pg_role_oid oid NOT NULL,
         grantor_pg_role_oid oid NOT NULL,
         PRIMARY KEY (arn, pg_role_oid));

CREATE OR REPLACE VIEW sys.iam_pg_role_mappings AS
       SELECT m.iam_oid::oid AS iam_oid, m.arn, m.pg_role_oid, r.rolname AS pg_role_name,
              m.grantor_pg_role_oid, g.rolname AS grantor_pg_role_name
         FROM sys.dsqlkit_iam_mappings m
         JOIN pg_roles r ON r.oid = m.pg_role_oid
         LEFT JOIN pg_roles g ON g.oid = m.grantor_pg_role_oid;

GRANT SELECT ON sys.iam_pg_role_mappings TO PUBLIC;

CREATE OR REPLACE FUNCTION sys.dsqlkit_iam(action text, role_name text, arn text)
       RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
       DECLARE r pg_roles%ROWTYPE;
       BEGIN
         IF session_user <> 'admin' THEN
           RAISE EXCEPTION USING ERRCODE = '42501',
             MESSAGE = format('permission denied to grant IAM trust with role %s', role_name);
         END IF;
         SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
         IF NOT FOUND THEN
           RAISE EXCEPTION USING ERRCODE = '42704',
             MESSAGE = format('IAM role %s does not exist', role_name);
         END IF;
         IF action = 'grant' THEN
           IF NOT r.rolcanlogin THEN
             RAISE EXCEPTION USING ERRCODE = '42501',
               MESSAGE = format('role %s must have the LOGIN attribute', role_name);
           END IF;
           INSERT INTO sys.dsqlkit_iam_mappings (arn, pg_role_oid, grantor_pg_role_oid)
             SELECT arn, r.oid, (SELECT oid FROM pg_roles WHERE rolname = session_user)
             ON CONFLICT DO NOTHING;
         ELSE
           DELETE FROM sys.dsqlkit_iam_mappings m
             WHERE m.arn = dsqlkit_iam.arn AND m.pg_role_oid = r.oid;
         END IF;
       END $$;

DO $$ DECLARE r record; BEGIN
         FOR r IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r'
                    AND n.nspname NOT IN ('sys', 'pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg_%' LOOP
           PERFORM sys.dsqlkit_add_limit_triggers(r.oid::regclass);
         END LOOP;
       END $$;
