-- The BEMS store on PostgreSQL, version 2: months moved out of the database.
--
-- `bems store archive` (bems_store::postgres::archive) exports a month's
-- rows of both row tables to an object store, checks what was stored, and
-- then, in one transaction, records the month here and drops its
-- partitions. A history that reaches an archived month says where its
-- rows went instead of "not found"; the auditors read the files there
-- (with Athena, docs/store.md).
CREATE TABLE archives (
    -- The first day of the month archived (UTC).
    month             date        NOT NULL CHECK (extract(day FROM month) = 1),
    -- status_changes or status_change_versions.
    table_name        text        NOT NULL CHECK (table_name IN ('status_changes', 'status_change_versions')),
    -- Where the file is (s3://bucket/key, or a path) and its manifest.
    location          text        NOT NULL,
    manifest_location text        NOT NULL,
    format            text        NOT NULL,
    compression       text        NOT NULL,
    rows              bigint      NOT NULL CHECK (rows >= 0),
    bytes             bigint      NOT NULL CHECK (bytes >= 0),
    -- Of the stored file's bytes (compressed), hex.
    sha256            text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    archived_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (month, table_name)
);
