"""The inventory service: stock, reservations, the audit trail and the live stock feed."""
