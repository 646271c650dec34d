-- Confirmed orders are handed to the warehouse (services/order/fulfilment.py): an order is
-- `shipped` once the warehouse accepted it, with the warehouse's shipment id. A refusal is
-- the warehouse's final answer: the order stays `confirmed`, with the refusal, for people.
ALTER TABLE orders
    ADD COLUMN shipment_id text,
    ADD COLUMN shipment_error text;

-- Confirmed orders the warehouse has not taken (the fulfilment backlog, its alert's metric).
CREATE INDEX orders_unshipped ON orders (created_at) WHERE status = 'confirmed';
