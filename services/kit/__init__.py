"""What every service is built from.

Web half: `settings` (typed environment), `app` (the application factory, health, readiness,
metrics and OpenAPI endpoints, `run`), `api` (routes declared with pydantic models, and the
OpenAPI document made from them), `errors` (JSON errors), `auth` (JWT, passwords), `metrics`,
`logs`. Data half: `db` (PostgreSQL through PgPool-II), `cache` (L1/L2/L3), `redis`,
`migrate`.
"""
