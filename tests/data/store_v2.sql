-- A run store written by advlab at commit af452de (schema version 2), for the migration test.
BEGIN TRANSACTION;
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attack TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    params TEXT NOT NULL,
    n INTEGER,
    robust_accuracy REAL,
    ci_low REAL,
    ci_high REAL,
    success_rate REAL,
    mean_norm REAL,
    median_norm REAL,
    wall_time REAL NOT NULL DEFAULT 0,
    queries INTEGER,
    robust INTEGER,
    UNIQUE (run_id, attack, norm, eps)
);
INSERT INTO "evaluations" VALUES(1,'20261130-140000-aaaaaa','pgd','linf',0.1,'{"steps":3}',3,0.0,0.0,0.56,1.0,0.1,0.1,0.5,12,0);
CREATE TABLE examples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    shape TEXT NOT NULL,
    x BLOB NOT NULL,
    x_adv BLOB NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "meta" VALUES('schema_version','2');
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    config TEXT NOT NULL,
    provenance TEXT NOT NULL,
    summary TEXT,
    error TEXT,
    owner TEXT,
    heartbeat REAL
);
INSERT INTO "runs" VALUES('20261130-140000-aaaaaa','audit','2026-11-30T16:32:04+00:00','2026-11-30T16:32:04+00:00','complete','{"eps":[0.0,0.1],"model":"m"}','{"git_revision":"af452de"}','{"clean_accuracy":1.0}',NULL,NULL,NULL);
CREATE TABLE samples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    success INTEGER NOT NULL,
    norm REAL NOT NULL,
    queries INTEGER NOT NULL,
    target INTEGER,
    extras TEXT,
    certified REAL,
    shard INTEGER,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
INSERT INTO "samples" VALUES(1,0,0,0,1,1,0.1,4,NULL,'{"x":1.0}',NULL,0);
INSERT INTO "samples" VALUES(1,1,1,1,2,1,0.1,4,NULL,'{"x":1.0}',NULL,0);
INSERT INTO "samples" VALUES(1,2,2,2,0,1,0.1,4,NULL,'{"x":1.0}',NULL,0);
CREATE INDEX runs_kind_status ON runs (kind, status);
COMMIT;
