-- The BEMS store on PostgreSQL, version 1.
--
-- Applied by `bems store migrate` (bems_store::postgres::migrate), never by
-- a writer at start-up: inside one transaction, under an advisory lock,
-- with search_path set to the cell's schema, so every name below is the
-- cell's. docs/store.md explains each choice.

-- One row per status change, keyed as Timestream keys a record: its series
-- (the invoice and stage; cell, Region and partition follow from the
-- invoice within a cell) and its time. A redelivered event is the same key
-- and the same content; a correction is the same key with a higher version.
--
-- Partitioned by occurred_at, the key's time, by month: every unique index
-- of a partitioned table must contain the partition column, which the key
-- does; the dashboards' windows and the auditors' exports are ranges of
-- it, so they read only the partitions they cover. An invoice's rows may
-- span two months; its history is a key-prefix lookup in each partition,
-- narrowed by the invoices table's first_seen.
CREATE TABLE status_changes (
    invoice_id            text        NOT NULL,
    stage                 text        NOT NULL,
    occurred_at           timestamptz NOT NULL,
    cell_id               text        NOT NULL,
    region                text        NOT NULL,
    partition             smallint    NOT NULL CHECK (partition BETWEEN 1 AND 99),
    status                text        NOT NULL,
    previous_status       text,
    event_id              uuid        NOT NULL,
    -- Unconstrained: the scale written (the currency's) is the scale kept.
    amount                numeric     NOT NULL CHECK (amount > 0),
    currency              text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    submitted_at          timestamptz,
    previous_occurred_at  timestamptz,
    issue_date            date        NOT NULL,
    due_date              date        NOT NULL,
    net_days              smallint    NOT NULL CHECK (net_days BETWEEN 0 AND 365),
    vendor_id             text        NOT NULL,
    vendor_country        text        NOT NULL,
    reason                text,
    stage_latency_ms      bigint      CHECK (stage_latency_ms >= 0),
    end_to_end_latency_ms bigint      CHECK (end_to_end_latency_ms >= 0),
    producer              text        NOT NULL,
    -- EventBridge's receipt time of the event: a correction is received
    -- later, so it has a higher version.
    version               timestamptz NOT NULL,
    -- Set on first insert only: a correction keeps it.
    stored_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (stage IN ('ingestion', 'reconciliation', 'authorization', 'posting')),
    CHECK (status IN ('submitted', 'ingested', 'reconciled', 'authorized', 'posted', 'rejected')),
    CHECK (previous_status IN ('submitted', 'ingested', 'reconciled', 'authorized', 'posted', 'rejected')),
    PRIMARY KEY (invoice_id, stage, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Rows arrive in about occurred_at order (each within minutes of
-- happening), which is what a BRIN index needs: a few pages per partition
-- instead of a B-tree entry per row, for the window and export scans.
CREATE INDEX status_changes_occurred_at ON status_changes USING brin (occurred_at) WITH (autosummarize = on);

-- No legitimate row is ever refused for its date: a row whose month has no
-- partition yet lands here. `bems store check` counts them (an alarm), and
-- `bems store partitions` moves them into the month's partition when it
-- creates it.
CREATE TABLE status_changes_default PARTITION OF status_changes DEFAULT;

-- Every version of every row, appended in the writer's transaction: the
-- first write and each correction. Nothing updates or deletes here.
CREATE TABLE status_change_versions (
    LIKE status_changes INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (invoice_id, stage, occurred_at, version)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE status_change_versions_default PARTITION OF status_change_versions DEFAULT;

-- One row per invoice: when it was first seen and its latest status, so
-- that a history narrows its partitions and the stuck query is an index
-- range scan over open invoices instead of a GROUP BY over every row.
-- Each status change updates its invoice's row in the writer's
-- transaction; the latest is the one with the greatest (occurred_at, version).
CREATE TABLE invoices (
    invoice_id      text        PRIMARY KEY,
    partition       smallint    NOT NULL,
    producer        text        NOT NULL,
    first_seen      timestamptz NOT NULL,
    latest_at       timestamptz NOT NULL,
    latest_version  timestamptz NOT NULL,
    latest_stage    text        NOT NULL,
    latest_status   text        NOT NULL,
    latest_event_id uuid        NOT NULL,
    terminal        boolean     NOT NULL
);
CREATE INDEX invoices_open ON invoices (latest_at) WHERE NOT terminal;

-- Per minute (of occurred_at), stage and partition: what the panels
-- aggregate, updated in the writer's transaction only when a row was
-- really inserted or replaced (by the difference between the old and the
-- new row). Each (stage, partition) is one message group of the status
-- queue, which one writer at a time consumes, so its rows see no lock
-- contention. Synthetic (canary) rows count only in `synthetic`.
--
-- Latencies are histograms over fixed bucket bounds
-- (bems_store::histogram::LATENCY_BOUNDS_MS): element i counts values in
-- [bound i, bound i+1). visibility_ms: stored_at - occurred_at;
-- stage_latency_ms and end_to_end_ms (posted rows only) from the event.
CREATE TABLE status_minute (
    minute           timestamptz NOT NULL,
    stage            text        NOT NULL,
    partition        smallint    NOT NULL,
    changes          bigint      NOT NULL,
    synthetic        bigint      NOT NULL,
    visibility_ms    bigint[]    NOT NULL,
    stage_latency_ms bigint[]    NOT NULL,
    end_to_end_ms    bigint[]    NOT NULL,
    PRIMARY KEY (minute, stage, partition)
);

-- Per minute and partition, the money of submitted (non-synthetic)
-- invoices by currency, ISO week of the due date and payment terms: the
-- finance panels. Submissions are the ingestion stage's, so again one
-- writer per partition.
CREATE TABLE money_minute (
    minute    timestamptz NOT NULL,
    partition smallint    NOT NULL,
    currency  text        NOT NULL,
    due_week  date        NOT NULL,
    net_days  smallint    NOT NULL,
    invoices  bigint      NOT NULL,
    amount    numeric     NOT NULL,
    PRIMARY KEY (minute, partition, currency, due_week, net_days)
);

-- Element-wise sum of two count arrays (a histogram and its change).
CREATE FUNCTION add_counts(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY(SELECT coalesce(x, 0) + coalesce(y, 0)
                 FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i);

-- Per minute, partition and currency: the ten largest submitted
-- (non-synthetic) invoices by amount, ties by invoice id, for the
-- high-value panel: the largest of a window at any exchange rates are
-- among these. New submissions are merged in by the writer; a corrected
-- submission recomputes its minute's entries from the rows.
CREATE TABLE largest_minute (
    minute      timestamptz NOT NULL,
    partition   smallint    NOT NULL,
    currency    text        NOT NULL,
    amounts     numeric[]   NOT NULL,
    invoice_ids text[]      NOT NULL,
    PRIMARY KEY (minute, partition, currency)
);
