"""The order service: carts, orders, the checkout saga and order history."""
