"""What the services export to the platform around them: the names of their metrics and the
format of a request id.

This is the contract the composition builds on: the alerts (stacks/alerts.py), the
autoscalers' custom metrics (the service table), the dashboards and the gateway's renderer
read these names from here; a service never imports the composition to learn them.
"""

from __future__ import annotations

# --- every service (services.kit.metrics) ------------------------------------------------------
HTTP_REQUESTS = "http_requests_total"  # labels: service, route, method, status
HTTP_LATENCY = "http_request_duration_seconds"  # histogram; labels: service, route
CACHE_REQUESTS = "cache_requests_total"  # labels: service, layer (l1|l2|l3), result (hit|miss)
EVENTS_DEAD_LETTERS = "events_dead_letters"  # labels: group; given up even after re-drives
DB_QUERY_SECONDS = "db_query_duration_seconds"  # histogram; labels: service, kind (read|write)
DB_POOL_WAIT_SECONDS = "db_pool_wait_seconds"  # histogram; labels: service, pool
DB_POOL_CONNECTIONS = "db_pool_connections"  # labels: service, pool, state (in_use|idle)
DB_POOL_TIMEOUTS = "db_pool_timeouts_total"  # labels: service, pool

# --- one service each --------------------------------------------------------------------------
# An HPA scales up when a metric rises above target, so the seed's "hit ratio above 85 %" is
# exported as a miss ratio.
PRODUCT_CACHE_MISS_RATIO = "product_cache_miss_ratio"
# First pages of search results, by whether they found anything (result: found|empty).
PRODUCT_SEARCHES = "product_searches_total"
RESET_MAILS = "password_reset_mails_total"  # labels: result (sent|skipped|failed)
# Carts begun (a line put into an empty cart) and carts ordered from: cart abandonment.
CARTS_STARTED = "carts_started_total"
CARTS_CHECKED_OUT = "carts_checked_out_total"
# Where in the results the product a shopper chose stood (1 = first hit), by what they did with
# it (action: click|purchase): search relevance (the recording `search_selection_top3_ratio`).
PRODUCT_SEARCH_SELECTION_POSITION = "product_search_selection_position"  # histogram
SEARCH_SELECTION_BUCKETS = (1, 2, 3, 5, 10, 20, 50)
ORDER_QUEUE_DEPTH = "order_queue_depth"  # orders whose checkout saga has not finished
# Confirmed orders the warehouse has not taken this long after (a refusal, or it is down).
ORDERS_AWAITING_SHIPMENT = "orders_awaiting_shipment"
WAREHOUSE_CALLS = "warehouse_calls_total"  # labels: result (services.kit.resilience.Outcome)
WAREHOUSE_BREAKER_STATE = "warehouse_breaker_state"  # 0 closed, 1 half-open, 2 open
# Units sold (reservations committed) and units on hand (free or reserved): inventory turnover
# (the recording `inventory_turnover_daily`).
INVENTORY_UNITS_SOLD = "inventory_units_sold_total"
INVENTORY_UNITS_ON_HAND = "inventory_units_on_hand"
PAYMENT_ATTEMPTS = "payment_attempts_total"  # labels: provider, result
PAYMENT_BREAKER_STATE = "payment_breaker_state"  # labels: provider; 0 closed, 1 half-open, 2 open
PAYMENT_VELOCITY_UNAVAILABLE = "payment_fraud_velocity_unavailable_total"  # label: outcome

# --- requests ---------------------------------------------------------------------------------
# An X-Request-Id a client may send: kept when it matches (the gateway and every service agree),
# replaced by a new one otherwise, so a log line never carries what an attacker wrote.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
