-- Password-reset e-mails are sent (services/user/mailer.py). The outbox event of a reset now
-- carries a random reset id, from which only the user service (it holds the reset key) can
-- rebuild the token; it used to carry the token in clear.

-- When the e-mail went out: a redelivered event does not send it again.
ALTER TABLE password_resets ADD COLUMN mailed_at timestamptz;

-- Rows of the old form lose their clear token (and the address, which the mailer now reads
-- from the account). Their resets stay valid until they expire, but nothing can mail them:
-- they were never mailed before either. Old entries in the Redis stream keep theirs until it
-- is trimmed; every such token expires at most 30 minutes after this migration.
UPDATE outbox SET payload = payload - 'token' - 'email'
WHERE topic = 'user.password_reset' AND payload ? 'token';
