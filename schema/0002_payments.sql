-- Payments and access (issue 8): every Checkout Session we create and every outcome Stripe reports,
-- webhook events with what we did with them, and refunds/disputes that withdraw access.

-- A session's life: pending -> processing (async payment method) -> completed | failed; pending ->
-- expired; completed -> refunded | disputed. Terminal states never go back (out-of-order events).
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'processing', 'completed', 'expired', 'failed', 'refunded', 'disputed'));
ALTER TABLE payments
    ADD COLUMN checkout_url    text,
    ADD COLUMN idempotency_key text,
    ADD COLUMN source          text,          -- what recorded the outcome: webhook, status_lookup, reconcile
    ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN amount_refunded_cents integer NOT NULL DEFAULT 0 CHECK (amount_refunded_cents >= 0);
CREATE INDEX payments_open_idx ON payments (created_at) WHERE status IN ('pending', 'processing');
CREATE INDEX payments_intent_idx ON payments (stripe_payment_intent) WHERE stripe_payment_intent IS NOT NULL;

-- What each webhook event did (granted, duplicate, ignored, unknown_user, revoked ...).
ALTER TABLE stripe_events
    ADD COLUMN checkout_session_id text,
    ADD COLUMN user_id             uuid REFERENCES users (id) ON DELETE SET NULL,
    ADD COLUMN outcome             text;
CREATE INDEX stripe_events_session_idx ON stripe_events (checkout_session_id);
