-- Issue 28: the audit trail. Append-only, tamper-evident, partitioned by month.
-- Idempotent: safe to apply again.
--
-- One table for every writer. Which rows a service may add is decided by row-level security on
-- the writer's name ("<process>/<instance>/<worker>"): the gateway role may insert only rows whose
-- writer starts with "gateway/", the backend role only "backend/" ones. Nobody but the owner (the
-- role that runs `tokengate migrate`, which neither service logs in as) may UPDATE, DELETE or
-- TRUNCATE: the grants say so, and a trigger refuses it even to a role granted it by mistake.
-- Tamper evidence (docs/SECURITY.md, "Audit trail"): every row carries the SHA-256 of its
-- writer's previous row, and audit_heads keeps each writer's last sequence and hash, updated in
-- the same transaction as the insert, so deleting the newest row is detected too.

-- The auditor reads the trail and nothing else; an operator grants it to their own login role
-- (GRANT tokengate_auditor TO alice). NOLOGIN: no password to manage.
DO $$
DECLARE
    may_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    IF may_create AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_auditor') THEN
        BEGIN
            CREATE ROLE tokengate_auditor NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- the cursor of the query API (newest first, then "before this id"): never reused, never
-- shown as a position in a chain; the chain's own position is (writer, seq)
CREATE SEQUENCE IF NOT EXISTS audit_events_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS audit_events (
    id           bigint NOT NULL DEFAULT nextval('audit_events_id_seq'),
    at           timestamptz NOT NULL,
    writer       text NOT NULL,
    seq          bigint NOT NULL,
    type         text NOT NULL,
    outcome      text NOT NULL,
    actor        text,
    subject      uuid,
    -- an email that matches no account: HMAC-SHA-256 under the audit key, hex; never the address
    subject_hmac text,
    family       uuid,
    ip           text,
    user_agent   text,
    request_id   text,
    trace_id     text,
    service      text,
    rule         text,
    details      jsonb NOT NULL DEFAULT '{}',
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    PRIMARY KEY (id, at),
    CONSTRAINT audit_events_outcome CHECK (outcome IN ('success', 'failure')),
    CONSTRAINT audit_events_seq CHECK (seq >= 1),
    -- every field bounded here as well as in servicekit.audit: a writer bug cannot grow a row
    CONSTRAINT audit_events_sizes CHECK (
        char_length(writer) <= 200 AND char_length(type) <= 64 AND char_length(actor) <= 64
        AND char_length(subject_hmac) <= 64 AND char_length(ip) <= 64
        AND char_length(user_agent) <= 256 AND char_length(request_id) <= 128
        AND char_length(trace_id) <= 32 AND char_length(service) <= 64
        AND char_length(rule) <= 128 AND octet_length(details::text) <= 2048
        AND octet_length(prev_hash) = 32 AND octet_length(hash) = 32
    )
) PARTITION BY RANGE (at);

CREATE INDEX IF NOT EXISTS audit_events_id_idx ON audit_events (id);
CREATE INDEX IF NOT EXISTS audit_events_subject_idx ON audit_events (subject, id);
CREATE INDEX IF NOT EXISTS audit_events_chain_idx ON audit_events (writer, seq);

CREATE TABLE IF NOT EXISTS audit_heads (
    writer      text PRIMARY KEY,
    last_seq    bigint NOT NULL,
    last_hash   bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- set by `tokengate audit prune` only (the owner): the last event of this writer in the
    -- partitions it dropped, so `audit verify` knows where the remaining chain must start
    pruned_seq  bigint NOT NULL DEFAULT 0,
    pruned_hash bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'
);

CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- a head only moves forward: a service cannot rewind its chain to hide what it wrote
CREATE OR REPLACE FUNCTION audit_head_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit heads are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.last_seq < OLD.last_seq OR NEW.pruned_seq < OLD.pruned_seq
        OR (NEW.last_seq = OLD.last_seq AND NEW.last_hash <> OLD.last_hash) THEN
        RAISE EXCEPTION 'an audit head only moves forward' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events;
-- a row trigger on the partitioned table is cloned onto every partition, present and future
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events;
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
DROP TRIGGER IF EXISTS audit_heads_forward ON audit_heads;
CREATE TRIGGER audit_heads_forward BEFORE UPDATE OR DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward();
DROP TRIGGER IF EXISTS audit_heads_no_truncate ON audit_heads;
CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- The monthly partition holding `day`, created if missing: the writers call it ahead of time
-- (this month and the next), so an insert never finds no partition, and there is never a
-- default partition (it would make every later CREATE scan it). SECURITY DEFINER: the services
-- may add a partition but own none of them. UTC bounds, whatever the caller's TimeZone.
CREATE OR REPLACE FUNCTION audit_ensure_partition(day date) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    start date := date_trunc('month', day)::date;
    name text := 'audit_events_' || to_char(start, 'YYYYMM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
            name, start::timestamptz, (start + interval '1 month')::timestamptz
        );
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        RETURN name;  -- another writer made it first
    END;
    -- TRUNCATE of a partition does not fire the parent's statement trigger
    EXECUTE format(
        'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I'
        ' FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()', name
    );
    EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', name);
    RETURN name;
END
$$;
REVOKE ALL ON FUNCTION audit_ensure_partition(date) FROM PUBLIC;
SELECT audit_ensure_partition(current_date);
SELECT audit_ensure_partition((current_date + interval '1 month')::date);

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON audit_events, audit_heads FROM PUBLIC;

-- Grants and policies exist only for the roles that exist; without them no service reaches the
-- trail at all (fail closed: RLS with no policy shows and accepts nothing).
DO $$
DECLARE
    kind text;
    role_name text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['gateway', 'backend'] LOOP
        role_name := 'tokengate_' || kind;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            CONTINUE;
        END IF;
        EXECUTE format('REVOKE ALL ON audit_events, audit_heads FROM %I', role_name);
        EXECUTE format('GRANT INSERT ON audit_events TO %I', role_name);
        EXECUTE format('GRANT SELECT, INSERT ON audit_heads TO %I', role_name);
        EXECUTE format(
            'GRANT UPDATE (last_seq, last_hash, updated_at) ON audit_heads TO %I', role_name
        );
        EXECUTE format('GRANT USAGE ON SEQUENCE audit_events_id_seq TO %I', role_name);
        EXECUTE format('GRANT EXECUTE ON FUNCTION audit_ensure_partition(date) TO %I', role_name);
        EXECUTE format('DROP POLICY IF EXISTS audit_insert_%s ON audit_events', kind);
        EXECUTE format(
            'CREATE POLICY audit_insert_%s ON audit_events FOR INSERT TO %I'
            ' WITH CHECK (split_part(writer, ''/'', 1) = %L)', kind, role_name, kind
        );
        EXECUTE format('DROP POLICY IF EXISTS audit_heads_%s ON audit_heads', kind);
        EXECUTE format(
            'CREATE POLICY audit_heads_%s ON audit_heads FOR ALL TO %I'
            ' USING (split_part(writer, ''/'', 1) = %L)'
            ' WITH CHECK (split_part(writer, ''/'', 1) = %L)', kind, role_name, kind, kind
        );
    END LOOP;
    -- The gateway answers the admin and "my events" queries itself: it reads every row.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_gateway') THEN
        GRANT SELECT ON audit_events TO tokengate_gateway;
        DROP POLICY IF EXISTS audit_read_gateway ON audit_events;
        CREATE POLICY audit_read_gateway ON audit_events FOR SELECT TO tokengate_gateway
            USING (true);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_auditor') THEN
        GRANT USAGE ON SCHEMA public TO tokengate_auditor;
        GRANT SELECT ON audit_events, audit_heads TO tokengate_auditor;
        DROP POLICY IF EXISTS audit_read_auditor ON audit_events;
        CREATE POLICY audit_read_auditor ON audit_events FOR SELECT TO tokengate_auditor
            USING (true);
        DROP POLICY IF EXISTS audit_heads_auditor ON audit_heads;
        CREATE POLICY audit_heads_auditor ON audit_heads FOR SELECT TO tokengate_auditor
            USING (true);
    END IF;
END
$$;
