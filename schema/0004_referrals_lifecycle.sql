-- Intro (referral) codes and the account lifecycle (issue 13).

-- One intro code per (introducer, target): generating again returns the same code (PROTOCOL §6 D4).
CREATE UNIQUE INDEX referral_codes_pair_key ON referral_codes (created_by, target_user_id);

-- Account deletion keeps a tombstone row: payments, reports against the user and bans reference it
-- and must outlive the account (see README "Account lifecycle"). deleted_at is set when the user asks;
-- the personal data is scrubbed by the deletion job (account_deletions) right after.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;
-- sha256 of the email of an account deleted while banned: linking that email again is refused.
ALTER TABLE users ADD COLUMN banned_email_hash bytea;
CREATE INDEX users_banned_email_hash_idx ON users (banned_email_hash) WHERE banned_email_hash IS NOT NULL;

-- The deletion job: created in the transaction that revokes the account's sessions, completed once the
-- S3 objects are gone and the rows are scrubbed. Unfinished jobs (a crash, S3 down) are retried by any
-- node; lease_until keeps two nodes from running the same job at once.
CREATE TABLE account_deletions (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    last_error   text
);
CREATE INDEX account_deletions_pending_idx ON account_deletions (requested_at) WHERE completed_at IS NULL;
