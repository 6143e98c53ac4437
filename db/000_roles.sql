-- Least-privilege login roles, one per service. Created only when the connecting user may
-- (superuser or CREATEROLE); otherwise an operator creates them and this file changes nothing.
-- Roles are cluster-wide, so two databases (or two concurrent migrate runs) may race to create
-- them: duplicate_object is expected and ignored. Passwords are set by the operator (see README),
-- never here.
DO $$
DECLARE
    may_create boolean;
    role_name text;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    IF NOT may_create THEN
        RETURN;
    END IF;
    FOREACH role_name IN ARRAY ARRAY['tokengate_backend', 'tokengate_gateway'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- A fresh database lets PUBLIC create objects in the public schema on PostgreSQL < 15; neither
-- service role should be able to.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
