-- E-mail addresses in one form (services/user/accounts.py: NFKC, then case folding), so that
-- storage, lookup and the login throttle agree. Until now lookups folded case in SQL
-- (`lower(email) = lower($1)`) and the throttle in Python, which differ (U+0130 shows it).
-- PostgreSQL has no full case folding: lower() after NFKC is the same for every ASCII
-- address and for most others; where they differ (`ß`, which Python folds to `ss`), a row
-- registered before this migration is not found by its owner's login until an operator sets
-- it to the Python form (README, "Security").
UPDATE users SET email = lower(normalize(email, NFKC))
WHERE email IS DISTINCT FROM lower(normalize(email, NFKC));

-- One account per normalised address: lookups compare the column itself.
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (email);
