"""The payment service: provider adapters, resilience (breakers, retries, failover), fraud rules,
and the provider simulators the local platform and the tests run in place of Stripe and PayPal."""
