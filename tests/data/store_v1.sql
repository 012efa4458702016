-- A run store written by advlab 0.1.0 (schema version 1, commit 456c155), for the migration test.
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
    UNIQUE (run_id, attack, norm, eps)
);
INSERT INTO "evaluations" VALUES(1,'20261130-120000-abcdef','clean','linf',0.0,'{}',6,8.3333333333333337034e-01,0.4,0.97,NULL,NULL,NULL,0.0,6);
INSERT INTO "evaluations" VALUES(2,'20261130-120000-abcdef','pgd','linf',0.1,'{"steps":40}',6,0.5,0.19,0.81,0.4,0.1,0.1,1.5,205);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "meta" VALUES('schema_version','1');
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    summary TEXT
);
INSERT INTO "runs" VALUES('20261130-120000-abcdef','audit','2026-11-30T14:18:54+00:00','2026-11-30T14:18:54+00:00','complete','{"attacks":["fgsm","pgd"],"data":"mnist5k","eps":[0.0,0.1],"model":"papernot-mnist","norm":"linf","seed":0}','{"advlab":"0.1.0","cuda":null,"git_revision":"456c155","numpy":"2.1.0","platform":"Linux","python":"3.11.7","seed":0,"torch":"2.13.0+cpu"}','{"clean_accuracy":0.8333333333333334}');
INSERT INTO "runs" VALUES('20261130-120100-123456','audit','2026-11-30T14:18:54+00:00','2026-11-30T14:18:54+00:00','interrupted','{"attacks":["fgsm","pgd"],"data":"mnist5k","eps":[0.0,0.1],"model":"papernot-mnist","norm":"linf","seed":1}','{"advlab":"0.1.0","cuda":null,"git_revision":"456c155","numpy":"2.1.0","platform":"Linux","python":"3.11.7","seed":0,"torch":"2.13.0+cpu"}',NULL);
CREATE TABLE samples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    success INTEGER NOT NULL,
    norm REAL NOT NULL,
    queries INTEGER NOT NULL,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
INSERT INTO "samples" VALUES(1,0,0,0,0,0,0.0,1);
INSERT INTO "samples" VALUES(1,1,1,1,1,0,0.0,1);
INSERT INTO "samples" VALUES(1,2,2,2,2,0,0.0,1);
INSERT INTO "samples" VALUES(1,3,0,0,0,0,0.0,1);
INSERT INTO "samples" VALUES(1,4,1,1,1,1,0.0,1);
INSERT INTO "samples" VALUES(1,5,2,2,2,0,0.0,1);
INSERT INTO "samples" VALUES(2,0,0,0,1,1,0.1,41);
INSERT INTO "samples" VALUES(2,1,1,1,1,0,0.0,41);
INSERT INTO "samples" VALUES(2,2,2,2,0,1,0.1,41);
INSERT INTO "samples" VALUES(2,3,0,0,0,0,0.0,41);
INSERT INTO "samples" VALUES(2,4,1,1,2,1,0.0,0);
INSERT INTO "samples" VALUES(2,5,2,2,2,0,0.0,41);
CREATE INDEX runs_kind_status ON runs (kind, status);
COMMIT;
