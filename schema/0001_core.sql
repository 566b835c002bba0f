-- The whole data model. Postgres is the durable truth: money, bans, matches and history live
-- here; Redis only holds live coordination state that the server can rebuild.

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_type        text NOT NULL DEFAULT 'guest' CHECK (account_type IN ('guest', 'permanent')),
    name                text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 40 AND name = btrim(name)),
    gender              text NOT NULL CHECK (gender IN ('female', 'male', 'nonbinary', 'unspecified')),
    email               text CHECK (email = lower(email) AND char_length(email) <= 254),
    password_hash       text,
    selfie_key          text,
    video_key           text,
    socials             jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(socials) = 'object'),
    role                text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'moderator', 'admin')),
    is_bot              boolean NOT NULL DEFAULT false,
    paid_status         text NOT NULL DEFAULT 'unpaid'
                        CHECK (paid_status IN ('unpaid', 'paid', 'qr_verified', 'qr_grace_period')),
    paid_at             timestamptz,
    payment_id          text,
    access_granted_at   timestamptz,          -- operator grant without payment (audited)
    qr_unlocked_at      timestamptz,
    successful_sessions integer NOT NULL DEFAULT 0 CHECK (successful_sessions >= 0),
    timer_total_seconds bigint  NOT NULL DEFAULT 0 CHECK (timer_total_seconds >= 0),
    session_count       integer NOT NULL DEFAULT 0 CHECK (session_count >= 0),
    ban_status          text NOT NULL DEFAULT 'none'
                        CHECK (ban_status IN ('none', 'temporary', 'permanent', 'vindicated')),
    introduced_to       uuid REFERENCES users (id) ON DELETE SET NULL,
    introduced_by       uuid REFERENCES users (id) ON DELETE SET NULL,
    introduced_via_code text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((account_type = 'permanent') = (email IS NOT NULL AND password_hash IS NOT NULL))
);
CREATE UNIQUE INDEX users_email_key ON users (email) WHERE email IS NOT NULL;
CREATE INDEX users_banned_idx ON users (ban_status) WHERE ban_status IN ('temporary', 'permanent');

CREATE TABLE sessions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash     bytea NOT NULL UNIQUE,      -- sha256 of the bearer token; the token is never stored
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('guest', 'login', 'link')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('logout', 'new_login', 'banned', 'operator')),
    ip             inet,
    user_agent     text,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX sessions_user_active_idx ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_ip_idx ON sessions (ip);

-- One row per participant (PROTOCOL §6 D17): a call's session_id is shared by both rows.
CREATE TABLE call_history (
    session_id       uuid NOT NULL,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id          uuid NOT NULL,
    partner_id       uuid REFERENCES users (id) ON DELETE SET NULL,
    partner_name     text NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz NOT NULL,
    duration_seconds integer NOT NULL CHECK (duration_seconds >= 0),
    agreed_seconds   integer NOT NULL CHECK (agreed_seconds BETWEEN 60 AND 1800),
    end_reason       text NOT NULL CHECK (end_reason IN ('ended', 'deadline', 'disconnect', 'banned')),
    messages         jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(messages) = 'array'),
    PRIMARY KEY (session_id, user_id),
    CHECK (ended_at >= started_at)
);
CREATE INDEX call_history_user_idx ON call_history (user_id, started_at DESC);
CREATE INDEX call_history_room_idx ON call_history (room_id);

-- A pair that may not be matched again until expires_at. Stored as an ordered pair.
CREATE TABLE cooldowns (
    user_a     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_b     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('call', 'declined', 'rescinded', 'timeout', 'disconnect')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
);
CREATE INDEX cooldowns_expiry_idx ON cooldowns (expires_at);
CREATE INDEX cooldowns_b_idx ON cooldowns (user_b);

CREATE TABLE invite_codes (
    code             text PRIMARY KEY CHECK (code ~ '^[A-Z0-9]{16}$'),
    type             text NOT NULL CHECK (type IN ('user', 'admin')),
    owner_user_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_by_label text NOT NULL,
    max_uses         integer NOT NULL,
    uses_remaining   integer NOT NULL,
    is_active        boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((type = 'admin' AND max_uses = -1 AND uses_remaining = -1)
        OR (type = 'user' AND max_uses > 0 AND uses_remaining BETWEEN 0 AND max_uses))
);
-- A user's own code is minted exactly once (§6 D20).
CREATE UNIQUE INDEX invite_codes_one_per_owner ON invite_codes (owner_user_id) WHERE type = 'user';

CREATE TABLE invite_code_redemptions (
    code        text NOT NULL REFERENCES invite_codes (code) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redeemed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, user_id)
);
CREATE INDEX invite_code_redemptions_user_idx ON invite_code_redemptions (user_id);

CREATE TABLE reports (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    reporter_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reported_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reason      text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 1000),
    room_id     uuid,
    shared_room boolean NOT NULL DEFAULT false,   -- verified against call_history; only these count to auto-ban
    reporter_ip inet,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reporter_id, reported_id),
    CHECK (reporter_id <> reported_id)
);
CREATE INDEX reports_reported_idx ON reports (reported_id) WHERE shared_room;
CREATE INDEX reports_created_idx ON reports (created_at DESC);

CREATE TABLE ban_records (
    user_id       uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    ban_status    text NOT NULL CHECK (ban_status IN ('temporary', 'permanent', 'vindicated')),
    review_status text NOT NULL DEFAULT 'pending'
                  CHECK (review_status IN ('pending', 'reviewed_ban', 'reviewed_vindicate')),
    banned_at     timestamptz NOT NULL DEFAULT now(),
    banned_reason text NOT NULL DEFAULT '',
    report_count  integer NOT NULL DEFAULT 0 CHECK (report_count >= 0),
    reviewed_at   timestamptz,
    reviewed_by   uuid REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX ban_records_review_idx ON ban_records (review_status, banned_at DESC);

-- IP bans only by moderator decision (§6 D10).
CREATE TABLE ip_bans (
    ip         inet PRIMARY KEY,
    reason     text NOT NULL DEFAULT '',
    user_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    banned_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    banned_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);

-- "Intro" links: a code that introduces a new user to target_user_id.
CREATE TABLE referral_codes (
    code           text PRIMARY KEY CHECK (code ~ '^[A-Z0-9]{10}$'),
    target_user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_by     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz
);
CREATE INDEX referral_codes_target_idx ON referral_codes (target_user_id);

CREATE TABLE referral_notifications (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    for_user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    referred_user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    introduced_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    read_at          timestamptz,
    UNIQUE (for_user_id, referred_user_id)
);
CREATE INDEX referral_notifications_unread_idx ON referral_notifications (for_user_id) WHERE read_at IS NULL;

CREATE TABLE payments (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_checkout_session_id text NOT NULL UNIQUE,
    stripe_payment_intent      text,
    amount_cents               integer NOT NULL CHECK (amount_cents >= 0),
    currency                   text NOT NULL,
    status                     text NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'completed', 'expired', 'failed')),
    created_at                 timestamptz NOT NULL DEFAULT now(),
    completed_at               timestamptz
);
CREATE INDEX payments_user_idx ON payments (user_id);

-- Webhook idempotency: a Stripe event is processed at most once (§6 D19).
CREATE TABLE stripe_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);

CREATE TABLE audit_log (
    id             bigserial PRIMARY KEY,
    actor_user_id  uuid REFERENCES users (id) ON DELETE SET NULL,
    actor_label    text NOT NULL,               -- e.g. 'cli', 'moderator:<name>', 'stripe'
    action         text NOT NULL,
    target_user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    details        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_target_idx ON audit_log (target_user_id, created_at DESC);
CREATE INDEX audit_log_created_idx ON audit_log (created_at DESC);
