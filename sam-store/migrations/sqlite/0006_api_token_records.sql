-- API tokens become records (sqlite): what each may do, its last use, an optional
-- expiry and its revocation. Tokens written before this were the ones a server was
-- started with, so they are bootstrap tokens: starting with another value revokes
-- them.
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'bootstrap';
ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
CREATE INDEX api_tokens_by_creation ON api_tokens (created_at, id);
