-- Keys every control plane on this database shares (the token signing keys), each
-- sealed with the credential key: servers need nothing else in common.
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
