-- The BEMS store on PostgreSQL, version 3: partition upkeep as functions
-- of the schema, so that one statement runs it: `bems store partitions`
-- (bems_store::postgres::partitions::ensure) on a connection or through
-- the Data API, and the cell template's daily schedule (EventBridge
-- Scheduler calling the RDS Data API, which runs one statement and no
-- program). Each function keeps the search_path the migration ran with,
-- the cell's schema, so the names below are the cell's wherever it is
-- called from.

-- The advisory lock of the schema's migrations, partition changes and
-- archives: the first eight bytes of SHA-256("bems-store:<schema>") as a
-- signed big-endian integer (bems_store::postgres::migrate::lock_key
-- computes the same).
CREATE FUNCTION upkeep_lock_key() RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT ('x' || substr(encode(sha256(convert_to('bems-store:' || current_schema(), 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint
$$;

-- Creates the monthly partitions of both row tables from the month of
-- `from_time` (UTC) for `months` months after it, moving any of their rows
-- out of the default partition (PostgreSQL refuses to create a partition
-- whose rows sit in the default one). One row per partition considered.
-- Runs in the caller's transaction, under the schema's advisory lock.
CREATE FUNCTION ensure_partitions(from_time timestamptz, months integer)
RETURNS TABLE (partition_name text, created boolean, moved bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    first_month timestamp := date_trunc('month', from_time AT TIME ZONE 'UTC');
    lo timestamptz;
    hi timestamptz;
    parent text;
    name text;
    n bigint;
BEGIN
    IF months IS NULL OR months < 0 OR months > 120 THEN
        RAISE EXCEPTION 'bems: months ahead must be 0 to 120, not %', months USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(upkeep_lock_key());
    FOR i IN 0..months LOOP
        lo := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        hi := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        FOREACH parent IN ARRAY ARRAY['status_changes', 'status_change_versions'] LOOP
            name := parent || '_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
            partition_name := name;
            IF to_regclass(quote_ident(name)) IS NOT NULL THEN
                created := false;
                moved := 0;
                RETURN NEXT;
                CONTINUE;
            END IF;
            EXECUTE format('SELECT count(*) FROM %I WHERE occurred_at >= $1 AND occurred_at < $2', parent || '_default')
                INTO n USING lo, hi;
            IF n = 0 THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
            ELSE
                -- The default partition is detached while the month's rows
                -- move, then attached again (which checks it holds none).
                EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', parent, parent || '_default');
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
                EXECUTE format(
                    'WITH gone AS (DELETE FROM %I WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) '
                    'INSERT INTO %I SELECT * FROM gone', parent || '_default', parent)
                    USING lo, hi;
                GET DIAGNOSTICS n = ROW_COUNT;
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I DEFAULT', parent, parent || '_default');
            END IF;
            created := true;
            moved := n;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- Fails, naming the count and the range, when status changes wait in the
-- default partition: a month without its partition, or a change that
-- arrived for an archived month. The schedule's failure is the alarm (its
-- dead-letter queue); `bems store check` says the same.
CREATE FUNCTION check_default_partition() RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    n bigint;
    oldest timestamptz;
    newest timestamptz;
BEGIN
    SELECT count(*), min(occurred_at), max(occurred_at) INTO n, oldest, newest FROM status_changes_default;
    IF n > 0 THEN
        RAISE EXCEPTION 'bems: % status change(s) in %.status_changes_default, % to %: run bems store partitions (or, for an archived month, export and delete them)',
            n, current_schema(), oldest, newest USING ERRCODE = 'P0001';
    END IF;
    RETURN n;
END
$$;

-- Only the owner (the migrations' user, the schedule's) makes partitions:
-- functions are executable by everyone unless taken back.
REVOKE EXECUTE ON FUNCTION ensure_partitions(timestamptz, integer) FROM PUBLIC;
