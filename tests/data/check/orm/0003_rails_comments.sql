-- Rails 7 structure.sql excerpt for the comments migration
CREATE TABLE public.comments (
    id bigserial PRIMARY KEY,
    task_id bigint NOT NULL,
    body text NOT NULL,
    author_ip inet,
    created_at timestamp(6) without time zone NOT NULL,
    updated_at timestamp(6) without time zone NOT NULL
);
CREATE INDEX index_comments_on_task_id ON public.comments USING btree (task_id);
CREATE INDEX CONCURRENTLY index_comments_on_created_at ON public.comments USING btree (created_at DESC);
ALTER TABLE ONLY public.comments
    ADD CONSTRAINT fk_rails_3bf61a60d3 FOREIGN KEY (task_id) REFERENCES public.tasks_task(id);
CREATE TABLE public.schema_migrations (
    version character varying NOT NULL PRIMARY KEY
);
INSERT INTO "schema_migrations" (version) VALUES ('20240301120000');
