-- Moderation (issue 9): one place for a user's ban status, report workflow, moderator 2FA,
-- audit columns.

-- A user's ban status lives only in users.ban_status (read by every authentication). ban_records
-- keeps the case around it: why, when, how many reports, the review, and a timed ban's end.
ALTER TABLE ban_records DROP COLUMN ban_status;
ALTER TABLE ban_records
    ADD COLUMN source     text NOT NULL DEFAULT 'auto' CHECK (source IN ('auto', 'moderator')),
    ADD COLUMN expires_at timestamptz,   -- a moderator's timed ban; NULL = until reviewed / for good
    ADD COLUMN lifted_at  timestamptz;   -- unbanned, vindicated or expired
CREATE INDEX ban_records_expiry_idx ON ban_records (expires_at) WHERE expires_at IS NOT NULL AND lifted_at IS NULL;

-- Reports: evidence kept at report time and a moderator workflow (open -> claimed -> resolved).
ALTER TABLE reports
    ADD COLUMN transcript  jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(transcript) = 'array'),
    ADD COLUMN state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'claimed', 'resolved')),
    ADD COLUMN assigned_to uuid REFERENCES users (id) ON DELETE SET NULL,
    ADD COLUMN claimed_at  timestamptz,
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN resolved_by uuid REFERENCES users (id) ON DELETE SET NULL,
    ADD COLUMN resolution  text CHECK (resolution IN ('dismiss', 'warn', 'temporary_ban', 'permanent_ban',
                                                      'ip_ban', 'vindicated', 'unban')),
    ADD CONSTRAINT reports_resolved_chk CHECK ((state = 'resolved') = (resolved_at IS NOT NULL AND resolution IS NOT NULL)),
    ADD CONSTRAINT reports_claimed_chk CHECK (state <> 'claimed' OR assigned_to IS NOT NULL);
CREATE INDEX reports_state_idx ON reports (state, created_at);
CREATE INDEX reports_reporter_idx ON reports (reporter_id);

CREATE TABLE report_notes (
    id             bigserial PRIMARY KEY,
    report_id      uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    author_user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    author_label   text NOT NULL,
    body           text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX report_notes_report_idx ON report_notes (report_id, created_at);

-- A warning a moderator gave (the user sees it on their next ban check).
CREATE TABLE warnings (
    id             bigserial PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reason         text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 1000),
    issued_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX warnings_user_idx ON warnings (user_id, created_at DESC);

-- TOTP second factor of moderator accounts. last_step: the newest time step accepted, so a code is
-- never accepted twice (replay), decided by the UPDATE that records it.
CREATE TABLE moderator_totp (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret      text NOT NULL CHECK (secret ~ '^[A-Z2-7]{16,64}$'),
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    last_step   bigint NOT NULL DEFAULT 0
);

-- Audit rows name the actor's IP and the state before and after the action.
ALTER TABLE audit_log
    ADD COLUMN ip     inet,
    ADD COLUMN before jsonb,
    ADD COLUMN after  jsonb;
CREATE INDEX audit_log_action_idx ON audit_log (action, created_at DESC);
