-- Who changed what through the API, when and from where: every mutating request (granted
-- or refused) with the caller's token name and role. Never the request body (a conf may
-- hold secrets).
CREATE TABLE audit_log (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT   NOT NULL,
    role     TEXT   NOT NULL,
    method   TEXT   NOT NULL,
    path     TEXT   NOT NULL,
    status   BIGINT NOT NULL,
    remote   TEXT
);
CREATE INDEX audit_log_by_time ON audit_log (at);
